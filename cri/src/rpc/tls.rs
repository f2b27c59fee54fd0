//! TLS for the streaming server: the configured PEM certificate chain and key, or a self-signed
//! certificate made at start for the address it listens on (containerd's
//! `enable_tls_streaming` without `x509_key_pair_streaming`).

use std::{net::SocketAddr, path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::{rustls, TlsAcceptor};

use crate::{config::StreamTls, CriError};

/// The acceptor `tls` asks for, or None when TLS is off.
pub fn acceptor(tls: &StreamTls, local: SocketAddr) -> Result<Option<TlsAcceptor>, CriError> {
    if !tls.enabled {
        return Ok(None);
    }
    let (chain, key) = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?),
        _ => self_signed(local)?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| CriError::Config(format!("stream_tls: {err}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| CriError::Config(format!("stream_tls: certificate and key: {err}")))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CriError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            CriError::Config(format!("stream_tls.cert_file {}: {err}", path.display()))
        })?;
    if chain.is_empty() {
        return Err(CriError::Config(format!(
            "stream_tls.cert_file {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CriError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|err| CriError::Config(format!("stream_tls.key_file {}: {err}", path.display())))
}

/// A certificate for the listening IP (and `localhost`), signed by its own key.
fn self_signed(
    local: SocketAddr,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CriError> {
    let names = vec![local.ip().to_string(), "localhost".to_string()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|err| CriError::Config(format!("stream_tls: self-signed certificate: {err}")))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|err| CriError::Config(format!("stream_tls: self-signed key: {err}")))?;
    Ok((vec![made.cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_configured_and_self_signed() {
        let local: SocketAddr = ([127, 0, 0, 1], 0).into();
        assert!(acceptor(&StreamTls::default(), local)
            .expect("off")
            .is_none());
        let on = StreamTls {
            enabled: true,
            ..Default::default()
        };
        assert!(acceptor(&on, local).expect("self-signed").is_some());

        let dir = tempfile::tempdir().expect("tempdir");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("key");
        let files = StreamTls {
            enabled: true,
            cert_file: Some(cert.clone()),
            key_file: Some(key),
        };
        assert!(acceptor(&files, local).expect("files").is_some());
        let swapped = StreamTls {
            key_file: Some(cert.clone()),
            ..files
        };
        let Err(err) = acceptor(&swapped, local) else {
            panic!("a certificate was taken for a key");
        };
        assert!(err.to_string().contains("key_file"), "{err}");
    }
}
