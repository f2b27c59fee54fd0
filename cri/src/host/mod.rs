//! Everything in ingotd that changes the node outside its own state directories, each part
//! under a root path so a test can point it at a temp tree.

pub mod affinity;
pub mod cgroups;
pub mod devices;
pub mod netdev;
pub mod netns;
pub mod pod_init;
pub mod rootfs;
pub mod rt_budget;
pub mod spawn;
pub mod zygote;
