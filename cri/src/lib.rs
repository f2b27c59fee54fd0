//! ingotd's CRI v1 server: RuntimeService and ImageService over gRPC, the state store, and the pod
//! and container managers that drive one `containerd-shim-ingot-v2` per pod. The server itself
//! lands with the CRI issue; this crate holds its place in the workspace layout.
