//! ImageService: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo over the image
//! store (`ingot-image`). Handlers are thin; conversions live here.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use ingot_image::{store::RegistryHosts, ImageRecord, ImageStore};
use k8s_cri::v1::{self, image_service_server::ImageService};
use oci_client::secrets::RegistryAuth;
use tonic::{Request, Response, Status};

use crate::{config::Config, CriError};

pub struct Images {
    store: Arc<ImageStore>,
    root: PathBuf,
    hosts: RegistryHosts,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Images {
    /// The image store, shared with the container manager.
    pub fn store(&self) -> Arc<ImageStore> {
        Arc::clone(&self.store)
    }

    pub fn open(config: &Config, metrics: Arc<crate::metrics::Metrics>) -> Result<Self, CriError> {
        let root = config.root.join("images");
        let store = ImageStore::open(&root)?;
        let mut hosts = RegistryHosts::default();
        for (host, registry) in &config.registries {
            hosts.mirrors.insert(host.clone(), registry.mirrors.clone());
            if registry.plain_http {
                hosts.plain_http.push(host.clone());
            }
        }
        Ok(Images {
            store: Arc::new(store),
            root,
            hosts,
            metrics,
        })
    }
}

fn image_name(spec: Option<&v1::ImageSpec>, field: &'static str) -> Result<String, CriError> {
    let name = spec.map(|s| s.image.trim()).unwrap_or_default();
    if name.is_empty() {
        return Err(CriError::InvalidArgument {
            field,
            reason: "an image reference is required".into(),
        });
    }
    Ok(name.to_string())
}

/// The CRI AuthConfig as registry credentials: username/password, or `auth` (base64
/// `user:password`), or a registry token; anonymous when empty.
pub fn registry_auth(auth: Option<&v1::AuthConfig>) -> Result<RegistryAuth, CriError> {
    let Some(auth) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    if !auth.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(auth.registry_token.clone()));
    }
    if !auth.username.is_empty() {
        return Ok(RegistryAuth::Basic(
            auth.username.clone(),
            auth.password.clone(),
        ));
    }
    if !auth.auth.is_empty() {
        let decoded = decode_base64(&auth.auth).ok_or_else(|| CriError::InvalidArgument {
            field: "auth.auth",
            reason: "not base64".into(),
        })?;
        let text = String::from_utf8(decoded).map_err(|_| CriError::InvalidArgument {
            field: "auth.auth",
            reason: "not UTF-8 once decoded".into(),
        })?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| CriError::InvalidArgument {
                field: "auth.auth",
                reason: "expected base64 of user:password".into(),
            })?;
        return Ok(RegistryAuth::Basic(user.to_string(), password.to_string()));
    }
    Ok(RegistryAuth::Anonymous)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|&c| c == byte)?;
        buffer = (buffer << 6) | u32::try_from(value).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// The image's user as the CRI reports it: a numeric uid, or a name.
fn user_of(config: &str) -> (Option<v1::Int64Value>, String) {
    let user = serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|c| c.get("config")?.get("User")?.as_str().map(str::to_string))
        .unwrap_or_default();
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<i64>() {
        Ok(uid) => (Some(v1::Int64Value { value: uid }), String::new()),
        Err(_) if name.is_empty() => (Some(v1::Int64Value { value: 0 }), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

fn to_cri(image: &ImageRecord) -> v1::Image {
    let (uid, username) = user_of(&image.config);
    v1::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: None,
        pinned: false,
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|name| !name.is_empty());
        let images = match filter {
            Some(name) => self
                .store
                .resolve(&name)
                .map_err(CriError::from)?
                .into_iter()
                .collect(),
            None => self.store.list().map_err(CriError::from)?,
        };
        Ok(Response::new(v1::ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "image.image")?;
        // An unknown image is not an error: the response carries no image (kubelet's contract).
        let image = self.store.resolve(&name).map_err(CriError::from)?;
        let mut info = HashMap::new();
        if request.verbose {
            if let Some(image) = &image {
                info.insert("info".to_string(), image.config.clone());
            }
        }
        Ok(Response::new(v1::ImageStatusResponse {
            image: image.as_ref().map(to_cri),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref(), "image.image")?;
        let auth = registry_auth(request.auth.as_ref())?;
        let span = tracing::info_span!("pull_image", image = %name);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let pulled = self.store.pull(&name, &auth, &self.hosts).await;
        self.metrics.observe_pull(
            started.elapsed(),
            pulled.as_ref().map(|record| record.size).map_err(|_| ()),
        );
        let record = pulled.map_err(CriError::from)?;
        Ok(Response::new(v1::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        let name = image_name(request.get_ref().image.as_ref(), "image.image")?;
        // Removing an image that is not there succeeds, as with containerd.
        let removed = self.store.remove(&name).map_err(CriError::from)?;
        tracing::info!(image = %name, removed, "remove image");
        Ok(Response::new(v1::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        let (bytes, inodes) = ingot_image::usage(&self.root);
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(Response::new(v1::ImageFsInfoResponse {
            image_filesystems: vec![v1::FilesystemUsage {
                timestamp,
                fs_id: Some(v1::FilesystemIdentifier {
                    mountpoint: self.root.display().to_string(),
                }),
                used_bytes: Some(v1::UInt64Value { value: bytes }),
                inodes_used: Some(v1::UInt64Value { value: inodes }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_forms() {
        assert!(matches!(registry_auth(None), Ok(RegistryAuth::Anonymous)));
        let basic = v1::AuthConfig {
            auth: "dXNlcjpwYXNz".into(), // user:pass
            ..Default::default()
        };
        match registry_auth(Some(&basic)) {
            Ok(RegistryAuth::Basic(user, password)) => {
                assert_eq!((user.as_str(), password.as_str()), ("user", "pass"));
            }
            other => panic!("{other:?}"),
        }
        let bad = v1::AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        };
        let err = registry_auth(Some(&bad)).expect_err("bad base64");
        assert!(err.to_string().contains("auth.auth"), "{err}");
    }

    #[test]
    fn image_users() {
        assert_eq!(
            user_of(r#"{"config":{"User":"1000"}}"#).0.map(|u| u.value),
            Some(1000)
        );
        assert_eq!(user_of(r#"{"config":{"User":"nginx:nginx"}}"#).1, "nginx");
        assert_eq!(user_of(r#"{"config":{}}"#).0.map(|u| u.value), Some(0));
    }
}
