//! TLS: the auto-mTLS identity, the settings of both ends of a connection ([`Security`] for the
//! side that dials, [`ServerTls`] for the side that serves), and grpcio credentials.

use std::time::{SystemTime, UNIX_EPOCH};

use grpcio::{
    CertificateRequestType, ChannelCredentials, ChannelCredentialsBuilder, ServerCredentials,
    ServerCredentialsBuilder,
};

use crate::error::{Error, ErrorKind, Result};

/// How a connection this side dials is secured.
#[derive(Clone, Debug)]
pub(crate) enum Security {
    Plaintext,
    /// Trust exactly `root_pem` under `server_name`; present `identity` if any.
    Tls {
        root_pem: String,
        identity: Option<Identity>,
        server_name: String,
    },
}

impl Security {
    /// TLS trusting exactly `root_pem` (a pinned certificate) under the name `localhost`, which
    /// go-plugin's and our certificates carry, presenting `identity` when given.
    pub(crate) fn pinned(root_pem: String, identity: Option<Identity>) -> Security {
        Security::Tls {
            root_pem,
            identity,
            server_name: "localhost".to_owned(),
        }
    }
}

/// How a server of this side is secured (with TLS; plaintext is `None` where this is optional):
/// it presents `identity`, and when `client_ca_pem` is given, clients must present a certificate
/// that verifies against it.
#[derive(Clone, Debug)]
pub(crate) struct ServerTls {
    pub identity: Identity,
    pub client_ca_pem: Option<String>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub(crate) struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub(crate) fn cert_der(&self) -> Result<Vec<u8>> {
        let cert = openssl::x509::X509::from_pem(self.cert_pem.as_bytes())
            .map_err(|e| tls_error("re-reading our own certificate", e))?;
        cert.to_der()
            .map_err(|e| tls_error("encoding our own certificate", e))
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity { .. }")
    }
}

/// Generates a fresh self-signed ECDSA P-256 certificate in memory, shaped like go-plugin's:
/// SAN `localhost`, CA:TRUE, client and server auth. P-256 (not go-plugin's P-521) because
/// BoringSSL-based peers (Python's grpcio) cannot verify P-521 signatures.
pub(crate) fn generate_identity() -> Result<Identity> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| tls_error("generating an ECDSA P-256 key", e))?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(|e| tls_error("building certificate parameters", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    dn.push(DnType::OrganizationName, "rpcplugin");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let mut serial = [0u8; 16];
    openssl::rand::rand_bytes(&mut serial).map_err(|e| tls_error("drawing a serial number", e))?;
    serial[0] &= 0x7f; // keep it positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let year = 1970
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 31_556_952)
            .unwrap_or(56) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 30, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| tls_error("self-signing the certificate", e))?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Turns the DER certificate from handshake field 6 into the PEM gRPC core wants as root.
pub(crate) fn der_to_pem(der: &[u8]) -> Result<String> {
    let cert = openssl::x509::X509::from_der(der).map_err(|e| {
        Error::new(
            ErrorKind::Tls,
            format!(
                "error parsing server cert: handshake field 6 decodes to {} bytes that are not a \
                 DER X.509 certificate",
                der.len()
            ),
        )
        .with_source(e)
    })?;
    let pem = cert
        .to_pem()
        .map_err(|e| tls_error("encoding the plugin certificate", e))?;
    Ok(String::from_utf8_lossy(&pem).into_owned())
}

/// Checks that a PEM string holds at least one certificate, so bad user input fails early.
pub(crate) fn check_cert_pem(what: &str, pem: &str) -> Result<()> {
    match openssl::x509::X509::stack_from_pem(pem.as_bytes()) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(Error::new(
            ErrorKind::Config,
            format!("{what}: expected PEM certificate(s), found none"),
        )),
        Err(e) => Err(Error::new(
            ErrorKind::Config,
            format!("{what}: expected PEM certificate(s): {e}"),
        )),
    }
}

/// Checks that a PEM string holds a private key.
pub(crate) fn check_key_pem(what: &str, pem: &str) -> Result<()> {
    openssl::pkey::PKey::private_key_from_pem(pem.as_bytes())
        .map(|_| ())
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("{what}: expected a PEM private key: {e}"),
            )
        })
}

/// Client credentials trusting exactly `root_pem`, presenting `identity` when given.
pub(crate) fn channel_credentials(
    root_pem: &str,
    identity: Option<&Identity>,
) -> ChannelCredentials {
    let mut builder = ChannelCredentialsBuilder::new().root_cert(root_pem.as_bytes().to_vec());
    if let Some(id) = identity {
        builder = builder.cert(
            id.cert_pem.as_bytes().to_vec(),
            id.key_pem.as_bytes().to_vec(),
        );
    }
    builder.build()
}

/// Server credentials for `tls`; plaintext without it.
pub(crate) fn server_credentials(tls: Option<&ServerTls>) -> ServerCredentials {
    let Some(tls) = tls else {
        return ServerCredentials::insecure();
    };
    let mut builder = ServerCredentialsBuilder::new().add_cert(
        tls.identity.cert_pem.as_bytes().to_vec(),
        tls.identity.key_pem.as_bytes().to_vec(),
    );
    if let Some(ca) = &tls.client_ca_pem {
        builder = builder.root_cert(
            ca.as_bytes().to_vec(),
            CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
        );
    }
    builder.build()
}

fn tls_error(context: &str, err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Tls, format!("{context}: {err}")).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_has_the_go_plugin_shape() {
        let id = generate_identity().unwrap();
        let cert = openssl::x509::X509::from_pem(id.cert_pem.as_bytes()).unwrap();
        let key = cert.public_key().unwrap().ec_key().unwrap();
        assert_eq!(
            key.group().curve_name(),
            Some(openssl::nid::Nid::X9_62_PRIME256V1)
        );
        let sans: Vec<String> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_owned))
            .collect();
        assert_eq!(sans, ["localhost"]);
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        check_key_pem("key", &id.key_pem).unwrap();
        assert!(cert.not_after() > openssl::asn1::Asn1Time::days_from_now(3650).unwrap());
        assert!(cert.not_before() < openssl::asn1::Asn1Time::days_from_now(0).unwrap());
        let der = id.cert_der().unwrap();
        assert_eq!(der_to_pem(&der).unwrap(), id.cert_pem);
    }

    #[test]
    fn bad_pem_and_der_are_rejected_clearly() {
        assert!(check_cert_pem("server CA", "not a pem")
            .unwrap_err()
            .to_string()
            .contains("server CA: expected PEM certificate"));
        assert_eq!(der_to_pem(b"junk").unwrap_err().kind(), ErrorKind::Tls);
    }
}
