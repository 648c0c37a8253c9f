//! Digest signing keys: one RSA-2048 key per region at a time, replaced every rotation period,
//! kept in the catalog with the private half sealed (AES-256-GCM) under a master key that never
//! enters the catalog.
//!
//! Validity windows: a key is valid from its creation until one rotation period plus an overlap
//! (a day, or the period if shorter) later, so consecutive keys overlap; a digest signed late for
//! a window that ended before its key existed moves that key's validity start back to the
//! window's end, so ListPublicKeys offers it for every digest it signed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use opentrail_catalog::{Catalog, CatalogError, StoredSigningKey};

use crate::digest::{KeyError, SigningKey, fingerprint, hex, unhex};

/// Version byte of a sealed private key: `1 ‖ nonce(12) ‖ AES-256-GCM(PKCS#8 DER) ‖ tag(16)`,
/// with the key's fingerprint as associated data.
const SEALED_V1: u8 = 1;
/// Longest overlap between consecutive keys' validity windows.
const MAX_OVERLAP: Duration = Duration::from_secs(86_400);

/// Errors of the keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("master key: {0}")]
    Master(String),
    #[error(
        "signing key {0} cannot be unsealed: the master key is not the one it was sealed with, or the stored key is damaged"
    )]
    Unseal(String),
    #[error("no signing key with fingerprint {0}")]
    Unknown(String),
}

/// The 256-bit key that seals the signing keys.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// From 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyringError> {
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| KeyringError::Master("must be 64 hex digits (256 bits)".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(Self(k))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyringError> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| KeyringError::Master("no randomness".into()))?;
        Ok(Self(k))
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh key if `create` and it does
    /// not exist.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Self, KeyringError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text)
                .map_err(|e| KeyringError::Master(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Self::generate()?;
                write_private(path, format!("{}\n", hex(&key.0)).as_bytes()).map_err(|e| {
                    KeyringError::Master(format!("cannot write {}: {e}", path.display()))
                })?;
                tracing::info!(file = %path.display(), "created a master key for the signing keys");
                Ok(key)
            }
            Err(e) => Err(KeyringError::Master(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn aead(&self) -> Result<LessSafeKey, KeyringError> {
        Ok(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0)
                .map_err(|_| KeyringError::Master("unusable key".into()))?,
        ))
    }

    /// Encrypts `plain` (AES-256-GCM, random nonce) bound to `fingerprint` as associated data:
    /// a signing key's fingerprint, or an access key id.
    pub fn seal(&self, fingerprint: &str, plain: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyringError::Master("no randomness".into()))?;
        let mut data = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(fingerprint.as_bytes()),
                &mut data,
            )
            .map_err(|_| KeyringError::Master("sealing failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypts what [`MasterKey::seal`] sealed for the same `fingerprint`.
    pub fn open(&self, fingerprint: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let bad = || KeyringError::Unseal(fingerprint.to_owned());
        let (&version, rest) = sealed.split_first().ok_or_else(bad)?;
        if version != SEALED_V1 || rest.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, data) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut data = data.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(fingerprint.as_bytes()), &mut data)
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

/// Writes a new file readable by its owner only (mode 0600), synced; fails if it exists.
pub fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// A public key as ListPublicKeys reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    pub fingerprint: String,
    /// DER PKCS#1 RSAPublicKey.
    pub der: Vec<u8>,
    pub valid_from_ms: i64,
    pub valid_to_ms: i64,
}

/// The signing keys of every region.
pub struct Keyring {
    catalog: Arc<Catalog>,
    master: MasterKey,
    rotation: Duration,
    unsealed: Mutex<HashMap<String, Arc<SigningKey>>>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Keyring {
    pub fn new(catalog: Arc<Catalog>, master: MasterKey, rotation: Duration) -> Self {
        Self {
            catalog,
            master,
            rotation,
            unsealed: Mutex::new(HashMap::new()),
        }
    }

    /// The fingerprint of the key that signs for `region` at `now_ms`, making (and storing) a
    /// new key when the region has none younger than one rotation period. Blocking (key
    /// generation takes a moment).
    pub fn current(&self, region: &str, now_ms: i64) -> Result<String, KeyringError> {
        let fresh_after = now_ms.saturating_sub(ms(self.rotation));
        if let Some(k) = self
            .catalog
            .signing_keys(region)?
            .into_iter()
            .rev()
            .find(|k| k.created_ms > fresh_after && k.created_ms <= now_ms)
        {
            return Ok(k.fingerprint);
        }
        let key = SigningKey::generate()?;
        let public_der = key.public_der();
        let fp = fingerprint(&public_der);
        let sealed = self.master.seal(&fp, &key.to_pkcs8()?)?;
        let overlap = self.rotation.min(MAX_OVERLAP);
        let stored = StoredSigningKey {
            fingerprint: fp.clone(),
            region: region.to_owned(),
            public_der,
            sealed_private: sealed,
            created_ms: now_ms,
            valid_from_ms: now_ms,
            valid_to_ms: now_ms.saturating_add(ms(self.rotation + overlap)),
        };
        let chosen = self.catalog.add_signing_key(&stored, fresh_after + 1)?;
        if chosen.fingerprint == fp {
            tracing::info!(region, fingerprint = %fp, "new digest signing key");
            if let Ok(mut cache) = self.unsealed.lock() {
                cache.insert(fp, Arc::new(key));
            }
        }
        Ok(chosen.fingerprint)
    }

    /// The private key with this fingerprint. Blocking.
    pub fn signer(&self, fp: &str) -> Result<Arc<SigningKey>, KeyringError> {
        if let Some(k) = self.unsealed.lock().ok().and_then(|c| c.get(fp).cloned()) {
            return Ok(k);
        }
        let stored = self
            .catalog
            .signing_key(fp)?
            .ok_or_else(|| KeyringError::Unknown(fp.to_owned()))?;
        let plain = self.master.open(fp, &stored.sealed_private)?;
        let key = Arc::new(SigningKey::from_pkcs8(&plain)?);
        if key.fingerprint() != fp {
            return Err(KeyringError::Unseal(fp.to_owned()));
        }
        if let Ok(mut cache) = self.unsealed.lock() {
            cache.insert(fp.to_owned(), Arc::clone(&key));
        }
        Ok(key)
    }

    /// Makes `fp` valid from `from_ms` on (a late digest for an earlier window).
    pub fn cover(&self, fp: &str, from_ms: i64) -> Result<(), KeyringError> {
        Ok(self.catalog.widen_signing_key(fp, from_ms)?)
    }

    /// The region's keys whose validity overlaps `[start_ms, end_ms]`, oldest first.
    pub fn public_keys(
        &self,
        region: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<PublicKeyInfo>, KeyringError> {
        Ok(self
            .catalog
            .signing_keys(region)?
            .into_iter()
            .filter(|k| k.valid_from_ms <= end_ms && k.valid_to_ms >= start_ms)
            .map(|k| PublicKeyInfo {
                fingerprint: k.fingerprint,
                der: k.public_der,
                valid_from_ms: k.valid_from_ms,
                valid_to_ms: k.valid_to_ms,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(dir: &Path, master: MasterKey, rotation: Duration) -> Keyring {
        let catalog = Arc::new(Catalog::open(&dir.join("c.db")).expect("catalog"));
        Keyring::new(catalog, master, rotation)
    }

    #[test]
    fn keys_rotate_overlap_and_are_sealed_at_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = MasterKey::generate().expect("master");
        let r = ring(dir.path(), master.clone(), Duration::from_secs(10));
        let a = r.current("us-east-1", 1_000_000).expect("first");
        assert_eq!(r.current("us-east-1", 1_009_999).expect("same"), a);
        let b = r.current("us-east-1", 1_010_000).expect("rotated");
        assert_ne!(a, b);
        let other = r.current("eu-west-1", 1_010_000).expect("other region");
        assert_ne!(other, b);
        // Validity: [created, created + period + overlap(= period here)].
        let keys = r.public_keys("us-east-1", 0, i64::MAX).expect("keys");
        assert_eq!(
            keys.iter()
                .map(|k| (k.fingerprint.clone(), k.valid_from_ms, k.valid_to_ms))
                .collect::<Vec<_>>(),
            [
                (a.clone(), 1_000_000, 1_020_000),
                (b.clone(), 1_010_000, 1_030_000)
            ]
        );
        assert_eq!(
            r.public_keys("us-east-1", 1_025_000, 1_026_000)
                .expect("k")
                .len(),
            1
        );
        assert!(
            r.public_keys("us-east-1", 0, 999_999)
                .expect("k")
                .is_empty()
        );
        for k in &keys {
            assert_eq!(fingerprint(&k.der), k.fingerprint);
        }
        // The private keys are stored sealed: no PKCS#8 in the clear.
        let signer = r.signer(&a).expect("signer");
        let pkcs8 = signer.to_pkcs8().expect("der");
        let stored = r.catalog.signing_key(&a).expect("get").expect("stored");
        assert!(
            !stored
                .sealed_private
                .windows(pkcs8.len())
                .any(|w| w == pkcs8.as_slice())
        );
        // A fresh keyring over the same catalog unseals the key with the same master key...
        let again = Keyring::new(Arc::clone(&r.catalog), master, Duration::from_secs(10));
        let s = again.signer(&a).expect("unsealed");
        assert_eq!(s.fingerprint(), a);
        let sig = s.sign_hex(b"m").expect("sign");
        assert!(crate::digest::verify_hex(&keys[0].der, b"m", &sig));
        // ...and refuses with another.
        let wrong = Keyring::new(
            Arc::clone(&r.catalog),
            MasterKey::generate().expect("other"),
            Duration::from_secs(10),
        );
        assert!(matches!(wrong.signer(&a), Err(KeyringError::Unseal(_))));
        // A late digest widens its key's validity.
        r.cover(&b, 990_000).expect("cover");
        let early = r.public_keys("us-east-1", 0, 995_000).expect("k");
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].fingerprint, b);
    }

    #[test]
    fn master_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/master.key");
        assert!(matches!(
            MasterKey::load_or_create(&path, false),
            Err(KeyringError::Master(_))
        ));
        let k = MasterKey::load_or_create(&path, true).expect("create");
        let again = MasterKey::load_or_create(&path, true).expect("read");
        assert_eq!(k.0, again.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("bad.key"), "abc").expect("write");
        assert!(MasterKey::load_or_create(&dir.path().join("bad.key"), true).is_err());
    }
}
