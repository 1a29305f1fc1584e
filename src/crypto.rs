//! Keys and sealing for everything that leaves the machine (DESIGN.md invariant 7).
//!
//! # Key hierarchy
//! A repository on a remote has one random 32-byte master key. It is stored only *wrapped*: in
//! the remote's `config` object ([`RepoConfig`]), encrypted with XChaCha20-Poly1305 under a key
//! derived from the passphrase by scrypt (salt and parameters beside it), like restic's `keys/`.
//! Changing the passphrase re-wraps the master key; no data is re-encrypted.
//!
//! From the master key two subkeys are derived with HMAC-SHA256 ([`Keys`]): the *data* key
//! that seals every object, and the *name* key under which object names are keyed hashes, so
//! the bucket's owner can neither read an object nor confirm that a known file is stored.
//!
//! # Sealed object format
//! ```text
//! sealed := "CLAWSEAL" nonce:[u8; 24] ciphertext-with-tag
//! ```
//! The associated data is the object's name, so an object moved or copied to another name (or
//! from another repository, whose key differs) fails authentication like a tampered one.

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The passphrase does not unwrap the master key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// An object failed authentication.
    #[error("object {name} failed authentication: it was tampered with, truncated, or comes from another repository")]
    Tampered {
        /// The object's name.
        name: String,
    },
    /// The repository config is not one this build reads.
    #[error("remote config: {0}")]
    BadConfig(String),
}

/// Result alias of the crypto layer.
pub type Result<T> = std::result::Result<T, CryptoError>;

const SEAL_MAGIC: &[u8; 8] = b"CLAWSEAL";
const NONCE_LEN: usize = 24;
/// Bytes a sealed object adds to its plaintext.
pub const SEAL_OVERHEAD: usize = SEAL_MAGIC.len() + NONCE_LEN + 16;

/// Format version of a repository, written in its [`RepoConfig`].
///
/// - 2: log segments may carry what store format 4 writes (a file's run of one chunk named
///   without a leaf) and epochs without format 2's time index. A build that reads only
///   repository format 1 would misread them, so the number goes up and such a build refuses
///   the repository instead. A push to a format-1 repository marks it 2 first.
pub const REPO_FORMAT: u32 = 2;
/// Repository formats this build reads.
pub const READABLE_REPO_FORMATS: &[u32] = &[1, 2];

/// scrypt cost: 2^15 × 8 × 128 B = 32 MiB and ~100 ms per derivation, restic's choice.
/// `CLAWFS_SCRYPT_LOG_N` lowers it for tests only.
fn default_log_n() -> u8 {
    std::env::var("CLAWFS_SCRYPT_LOG_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (10..=20).contains(n))
        .unwrap_or(15)
}

/// scrypt parameters as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// log2 of the CPU/memory cost.
    pub log_n: u8,
    /// Block size.
    pub r: u32,
    /// Parallelism.
    pub p: u32,
}

impl KdfParams {
    /// The parameters new keys are made with.
    fn new_default() -> KdfParams {
        KdfParams {
            log_n: default_log_n(),
            r: 8,
            p: 1,
        }
    }
}

/// The remote's `config` object: the only object readable with the passphrase alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepoConfig {
    /// [`REPO_FORMAT`].
    pub format: u32,
    /// Random id of the repository (hex), to tell repositories apart in messages.
    pub repo_id: String,
    /// scrypt parameters.
    pub kdf: KdfParams,
    /// scrypt salt (hex).
    pub salt: String,
    /// The master key sealed under the passphrase key (hex of a sealed object).
    pub wrapped_key: String,
}

/// A master key: 32 random bytes.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The keys derived from a master key: all the daemon keeps in memory.
#[derive(Clone)]
pub struct Keys {
    data: [u8; 32],
    names: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Fills a buffer from the OS's random source.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn passphrase_key(passphrase: &str, salt: &[u8], kdf: KdfParams) -> Result<[u8; 32]> {
    let params = scrypt::Params::new(kdf.log_n, kdf.r, kdf.p, 32)
        .map_err(|e| CryptoError::BadConfig(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 32];
    scrypt::scrypt(passphrase.as_bytes(), salt, &params, &mut out)
        .map_err(|e| CryptoError::BadConfig(format!("scrypt: {e}")))?;
    Ok(out)
}

/// Seals `plain` under `key`, bound to `name`.
pub fn seal_with(key: &[u8; 32], name: &str, plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = random();
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: name.as_bytes(),
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length we use");
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens what [`seal_with`] sealed under the same key and name.
pub fn open_with(key: &[u8; 32], name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let tampered = || CryptoError::Tampered {
        name: name.to_string(),
    };
    if sealed.len() < SEAL_OVERHEAD || &sealed[..8] != SEAL_MAGIC {
        return Err(tampered());
    }
    let (nonce, ct) = sealed[8..].split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| tampered())
}

/// [`open_with`] on an owned buffer, decrypting in place (no second copy of a large object).
pub fn open_owned_with(key: &[u8; 32], name: &str, mut sealed: Vec<u8>) -> Result<Vec<u8>> {
    let tampered = || CryptoError::Tampered {
        name: name.to_string(),
    };
    if sealed.len() < SEAL_OVERHEAD || &sealed[..8] != SEAL_MAGIC {
        return Err(tampered());
    }
    let nonce = *XNonce::from_slice(&sealed[8..8 + NONCE_LEN]);
    sealed.drain(..8 + NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place(&nonce, name.as_bytes(), &mut sealed)
        .map_err(|_| tampered())?;
    Ok(sealed)
}

impl RepoConfig {
    /// A new repository: a fresh master key wrapped under `passphrase`.
    pub fn create(passphrase: &str) -> Result<(RepoConfig, MasterKey)> {
        let master = MasterKey(random());
        let repo_id = hex::encode(random::<16>());
        let cfg = RepoConfig::wrap(&master, passphrase, repo_id)?;
        Ok((cfg, master))
    }

    fn wrap(master: &MasterKey, passphrase: &str, repo_id: String) -> Result<RepoConfig> {
        let (kdf, salt) = (KdfParams::new_default(), random::<32>());
        let kek = passphrase_key(passphrase, &salt, kdf)?;
        Ok(RepoConfig {
            format: REPO_FORMAT,
            kdf,
            salt: hex::encode(salt),
            wrapped_key: hex::encode(seal_with(&kek, &format!("config/{repo_id}"), &master.0)),
            repo_id,
        })
    }

    /// Parses the `config` object.
    pub fn parse(bytes: &[u8]) -> Result<RepoConfig> {
        let cfg: RepoConfig = serde_json::from_slice(bytes)
            .map_err(|e| CryptoError::BadConfig(format!("not a clawfs repository config ({e})")))?;
        if !READABLE_REPO_FORMATS.contains(&cfg.format) {
            return Err(CryptoError::BadConfig(format!(
                "repository format {} is not supported by this clawfs (it reads formats \
                 {READABLE_REPO_FORMATS:?}): a newer clawfs wrote it",
                cfg.format
            )));
        }
        Ok(cfg)
    }

    /// This config marked with the current [`REPO_FORMAT`], if it has an older one (the key
    /// and everything else unchanged).
    pub fn upgraded(&self) -> Option<RepoConfig> {
        (self.format < REPO_FORMAT).then(|| RepoConfig {
            format: REPO_FORMAT,
            ..self.clone()
        })
    }

    /// The bytes of the `config` object.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config encodes")
    }

    /// Unwraps the master key with `passphrase`.
    pub fn unlock(&self, passphrase: &str) -> Result<MasterKey> {
        let bad = |what: &str| CryptoError::BadConfig(format!("{what} is not valid hex"));
        let salt = hex::decode(&self.salt).map_err(|_| bad("salt"))?;
        let wrapped = hex::decode(&self.wrapped_key).map_err(|_| bad("wrapped key"))?;
        let kek = passphrase_key(passphrase, &salt, self.kdf)?;
        let key = open_with(&kek, &format!("config/{}", self.repo_id), &wrapped)
            .map_err(|_| CryptoError::WrongPassphrase)?;
        Ok(MasterKey(key.try_into().map_err(|_| {
            CryptoError::BadConfig("wrapped key has the wrong length".into())
        })?))
    }

    /// The same master key wrapped under a new passphrase (`remote passwd`), in the same
    /// repository format.
    pub fn rewrap(&self, master: &MasterKey, new_passphrase: &str) -> Result<RepoConfig> {
        Ok(RepoConfig {
            format: self.format,
            ..RepoConfig::wrap(master, new_passphrase, self.repo_id.clone())?
        })
    }
}

impl Keys {
    /// Derives the working keys.
    pub fn derive(master: &MasterKey) -> Keys {
        Keys {
            data: hmac(&master.0, &[b"clawfs data key v1"]),
            names: hmac(&master.0, &[b"clawfs name key v1"]),
        }
    }

    /// Seals an object's bytes, bound to its name.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        seal_with(&self.data, name, plain)
    }

    /// Opens a sealed object; any change to its bytes or name is an error.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        open_with(&self.data, name, sealed)
    }

    /// [`Keys::open`] on an owned buffer, in place.
    pub fn open_owned(&self, name: &str, sealed: Vec<u8>) -> Result<Vec<u8>> {
        open_owned_with(&self.data, name, sealed)
    }

    /// A keyed name for content: HMAC(name key, kind ‖ SHA-256(content)), hex. Stable, so
    /// uploading the same thing twice writes the same object.
    pub fn keyed_id(&self, kind: &str, content: &[u8]) -> String {
        use sha2::Digest;
        let digest = Sha256::digest(content);
        hex::encode(hmac(&self.names, &[kind.as_bytes(), b"\0", &digest]))
    }
}

/// Seals small local secrets (stored access keys) under a passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalSecret {
    kdf: KdfParams,
    salt: String,
    sealed: String,
}

impl LocalSecret {
    /// Seals `plain` under a key derived from `passphrase`.
    pub fn seal(passphrase: &str, what: &str, plain: &[u8]) -> Result<LocalSecret> {
        let (kdf, salt) = (KdfParams::new_default(), random::<32>());
        let key = passphrase_key(passphrase, &salt, kdf)?;
        Ok(LocalSecret {
            kdf,
            salt: hex::encode(salt),
            sealed: hex::encode(seal_with(&key, what, plain)),
        })
    }

    /// Opens it again.
    pub fn open(&self, passphrase: &str, what: &str) -> Result<Vec<u8>> {
        let salt =
            hex::decode(&self.salt).map_err(|_| CryptoError::BadConfig("bad salt".into()))?;
        let sealed =
            hex::decode(&self.sealed).map_err(|_| CryptoError::BadConfig("bad secret".into()))?;
        let key = passphrase_key(passphrase, &salt, self.kdf)?;
        open_with(&key, what, &sealed).map_err(|_| CryptoError::WrongPassphrase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::derive(&MasterKey([7; 32]))
    }

    proptest! {
        #[test]
        fn seal_round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096), name in "[a-z/0-9]{1,20}") {
            let k = keys();
            let s = k.seal(&name, &data);
            prop_assert_eq!(s.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_eq!(k.open(&name, &s).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_refused(data in proptest::collection::vec(any::<u8>(), 1..512), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let k = keys();
            let mut s = k.seal("packs/x", &data);
            let i = at.index(s.len());
            s[i] ^= 1 << bit;
            prop_assert!(k.open("packs/x", &s).is_err());
        }
    }

    #[test]
    fn opening_in_place_equals_opening_a_copy() {
        let k = keys();
        let s = k.seal("packs/p", &[5u8; 10_000]);
        assert_eq!(
            k.open_owned("packs/p", s.clone()).unwrap(),
            k.open("packs/p", &s).unwrap()
        );
        let mut bad = s.clone();
        bad[100] ^= 1;
        assert!(k.open_owned("packs/p", bad).is_err());
        assert!(k.open_owned("packs/q", s).is_err());
    }

    #[test]
    fn wrong_name_truncation_and_other_key_are_refused() {
        let k = keys();
        let s = k.seal("log/a", b"hello");
        assert!(k.open("log/b", &s).is_err());
        assert!(k.open("log/a", &s[..s.len() - 1]).is_err());
        assert!(Keys::derive(&MasterKey([8; 32])).open("log/a", &s).is_err());
    }

    #[test]
    fn passphrase_wraps_and_rewraps_the_master_key() {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let (cfg, master) = RepoConfig::create("correct horse").unwrap();
        let parsed = RepoConfig::parse(&cfg.to_bytes()).unwrap();
        let m2 = parsed.unlock("correct horse").unwrap();
        assert_eq!(m2.0, master.0);
        assert!(matches!(
            parsed.unlock("wrong"),
            Err(CryptoError::WrongPassphrase)
        ));
        let re = parsed.rewrap(&m2, "battery staple").unwrap();
        assert_eq!(re.unlock("battery staple").unwrap().0, master.0);
        assert!(re.unlock("correct horse").is_err());
        assert_eq!(re.repo_id, cfg.repo_id);
    }

    /// Formats 1 and 2 parse; a newer one is refused with a message saying so; an older one
    /// is upgraded by its format number alone.
    #[test]
    fn repository_formats_are_checked() {
        std::env::set_var("CLAWFS_SCRYPT_LOG_N", "10");
        let (cfg, _) = RepoConfig::create("pw").unwrap();
        assert_eq!(cfg.format, REPO_FORMAT);
        assert!(cfg.upgraded().is_none());
        let with = |format: u32| {
            RepoConfig::parse(
                &RepoConfig {
                    format,
                    ..cfg.clone()
                }
                .to_bytes(),
            )
        };
        let old = with(1).unwrap();
        let up = old.upgraded().unwrap();
        assert_eq!(up.format, REPO_FORMAT);
        assert_eq!(up.wrapped_key, cfg.wrapped_key);
        let err = with(3).unwrap_err().to_string();
        assert!(
            err.contains("repository format 3") && err.contains("newer"),
            "{err}"
        );
    }

    #[test]
    fn keyed_ids_depend_on_the_key() {
        let a = keys().keyed_id("pack", b"same");
        assert_eq!(a, keys().keyed_id("pack", b"same"));
        assert_ne!(
            a,
            Keys::derive(&MasterKey([9; 32])).keyed_id("pack", b"same")
        );
        assert_ne!(a, keys().keyed_id("index", b"same"));
    }
}
