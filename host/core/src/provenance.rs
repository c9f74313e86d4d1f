//! Where a probe file comes from, checked before it runs: a probe runs
//! with its grants (which can include `/usr` and every crash core), so a
//! file that someone other than the admin could have put there, or one
//! that is not the file the admin approved, must not load.
//!
//! Three checks, in this order, each before the component is compiled or
//! asked to `describe` itself:
//! 1. **Ownership and mode** ([`check_tree`]): the file and every directory
//!    from its own up to the configured probes directory are owned by root,
//!    the service user or this process's user, and writable by no group
//!    and no one else.
//! 2. **Pinning** ([`check_pin`]): `[probes.NAME] sha256` names the only
//!    digest the file may have.
//! 3. **Signatures** ([`Signatures::check`]): with `require_signatures`, a
//!    minisign signature beside the file (`NAME.wasm.sig`, or minisign's
//!    own `NAME.wasm.minisig`) from a key in `trusted_keys_dir`.

use std::fmt;
use std::fs::Metadata;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};
use thiserror::Error;

/// Why a probe file is not loaded. The text follows `refused: ` in
/// `telemctl probe list`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FileRefusal {
    /// Writable by a group or by everyone.
    #[error("{} is writable by {} (mode {mode:04o})", path.display(), if mode & 0o002 != 0 { "everyone" } else { "its group" })]
    Writable {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by someone who is not trusted to install probes.
    #[error("{} is owned by uid {uid}, not by root or the service user", path.display())]
    Owner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Not the file the admin pinned.
    #[error("digest mismatch: [probes.{name}] sha256 pins {pinned}, the file's is {actual}")]
    Digest {
        /// The probe.
        name: String,
        /// The pinned digest.
        pinned: String,
        /// The file's.
        actual: String,
    },
    /// `require_signatures` is on and there is no signature.
    #[error("unsigned: no {} beside it, and require_signatures is on", path.display())]
    Unsigned {
        /// Where the signature was looked for.
        path: PathBuf,
    },
    /// A signature from a trusted key that does not match the file.
    #[error("bad signature: {} does not verify with trusted key {key} ({why})", path.display())]
    BadSignature {
        /// The signature file.
        path: PathBuf,
        /// The key it names.
        key: String,
        /// What the verifier said.
        why: String,
    },
    /// A signature by a key that is not in `trusted_keys_dir`.
    #[error("untrusted key: {} is signed by key {key_id}, which is not in {}", path.display(), dir.display())]
    UntrustedKey {
        /// The signature file.
        path: PathBuf,
        /// The key id the signature names.
        key_id: String,
        /// The trusted keys' directory.
        dir: PathBuf,
    },
    /// The signature file is not a minisign signature.
    #[error("bad signature: {} is not a minisign signature ({why})", path.display())]
    MalformedSignature {
        /// The signature file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A file or directory on the way could not be examined.
    #[error("cannot check {}: {why}", path.display())]
    Unreadable {
        /// The file or directory.
        path: PathBuf,
        /// The OS error, in words.
        why: String,
    },
}

/// Who may own probe files and the directories above them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owners {
    uids: Vec<u32>,
}

impl Owners {
    /// Root, `service_user` (when it exists) and this process's user (a
    /// developer's own files in dev mode).
    pub fn for_service(service_user: &str) -> Owners {
        let mut uids = vec![0, rustix::process::geteuid().as_raw()];
        if let Ok(Some(u)) = nix::unistd::User::from_name(service_user) {
            uids.push(u.uid.as_raw());
        }
        uids.sort_unstable();
        uids.dedup();
        Owners { uids }
    }

    /// Root and `service_user`: who owns the files a `telemd` running as
    /// either accepts (`telemctl probe verify` answers for it, whoever
    /// runs it).
    pub fn for_daemon(service_user: &str) -> Owners {
        let mut uids = vec![0];
        if let Ok(Some(u)) = nix::unistd::User::from_name(service_user) {
            uids.push(u.uid.as_raw());
        }
        uids.dedup();
        Owners { uids }
    }

    /// Exactly these uids.
    pub fn of(uids: &[u32]) -> Owners {
        Owners {
            uids: uids.to_vec(),
        }
    }

    fn check(&self, path: &Path, m: &Metadata) -> Result<(), FileRefusal> {
        if !self.uids.contains(&m.uid()) {
            return Err(FileRefusal::Owner {
                path: path.to_owned(),
                uid: m.uid(),
            });
        }
        let mode = m.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(FileRefusal::Writable {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(())
    }
}

/// Checks the opened file (`file_meta`, from its descriptor, so it is the
/// file that will be read) and every directory from `file`'s own up to
/// and including `top`, the probes directory it was found in.
pub fn check_tree(
    file: &Path,
    file_meta: &Metadata,
    top: &Path,
    owners: &Owners,
) -> Result<(), FileRefusal> {
    owners.check(file, file_meta)?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d).map_err(|e| FileRefusal::Unreadable {
            path: d.to_owned(),
            why: e.to_string(),
        })?;
        owners.check(d, &m)?;
        if d == top || !d.starts_with(top) {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Opens a probe file for reading as it will be loaded: not through a
/// symlink (the directories checked are the file's own), not blocking on
/// a FIFO, a regular file only, and returns it with its metadata (taken
/// from the descriptor) for [`check_tree`].
pub fn open_probe_file(path: &Path) -> io::Result<(std::fs::File, Metadata)> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a symlink: install the file itself in the probes directory",
                )
            } else {
                e
            }
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((f, m))
}

/// Checks a pin: `pinned` (from `[probes.NAME] sha256`) against the
/// file's digest.
pub fn check_pin(name: &str, pinned: Option<&str>, actual: &str) -> Result<(), FileRefusal> {
    match pinned {
        Some(p) if !p.eq_ignore_ascii_case(actual) => Err(FileRefusal::Digest {
            name: name.to_owned(),
            pinned: p.to_owned(),
            actual: actual.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// A key probes may be signed with.
#[derive(Clone)]
pub struct TrustedKey {
    /// Its file's name without `.pub` (what `telemctl` names it by).
    pub name: String,
    /// Its minisign key id, as minisign prints it (upper-case hex).
    pub key_id: String,
    key: PublicKey,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.key_id)
    }
}

/// Largest key or signature file read (minisign's are a few hundred bytes,
/// with comments).
const SMALL_FILE_CAP: u64 = 4096;

/// The signature policy: whether one is required and which keys count.
#[derive(Clone, Debug, Default)]
pub struct Signatures {
    /// `require_signatures`.
    pub required: bool,
    /// `trusted_keys_dir`.
    pub dir: PathBuf,
    /// The keys found there.
    pub keys: Vec<TrustedKey>,
    /// Key files that were not used, with why (logged by the caller).
    pub skipped: Vec<(PathBuf, String)>,
}

impl Signatures {
    /// Reads every `*.pub` minisign public key in `dir`. The directory and
    /// each key file must pass the same ownership and mode check as probe
    /// files: a key someone else could plant would let them sign probes.
    pub fn load(required: bool, dir: &Path, owners: &Owners) -> Signatures {
        let mut s = Signatures {
            required,
            dir: dir.to_owned(),
            ..Default::default()
        };
        let dir_ok = std::fs::metadata(dir)
            .map_err(|e| e.to_string())
            .and_then(|m| owners.check(dir, &m).map_err(|r| r.to_string()));
        if let Err(why) = dir_ok {
            if required {
                s.skipped.push((dir.to_owned(), why));
            }
            return s;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return s;
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        paths.sort();
        for p in paths {
            match read_key(&p, owners) {
                Ok(k) => s.keys.push(k),
                Err(why) => s.skipped.push((p, why)),
            }
        }
        s
    }

    /// Where the signature of `wasm` is: `NAME.wasm.sig`, else minisign's
    /// default `NAME.wasm.minisig`; `None` if neither exists.
    pub fn signature_path(wasm: &Path) -> Option<PathBuf> {
        ["sig", "minisig"]
            .iter()
            .map(|ext| {
                let mut s = wasm.as_os_str().to_owned();
                s.push(".");
                s.push(ext);
                PathBuf::from(s)
            })
            .find(|p| p.symlink_metadata().is_ok())
    }

    /// Whether `bytes`, the contents of `wasm`, may load: `Ok(None)` when
    /// no signature is required and none is there, `Ok(Some(key))` when a
    /// trusted key signed it. A signature that is present is always checked,
    /// required or not: a bad one is never ignored.
    pub fn check(
        &self,
        wasm: &Path,
        bytes: &[u8],
        owners: &Owners,
    ) -> Result<Option<&TrustedKey>, FileRefusal> {
        let Some(sig_path) = Self::signature_path(wasm) else {
            if self.required {
                let mut s = wasm.as_os_str().to_owned();
                s.push(".sig");
                return Err(FileRefusal::Unsigned { path: s.into() });
            }
            return Ok(None);
        };
        let text =
            read_small(&sig_path, owners).map_err(|why| FileRefusal::MalformedSignature {
                path: sig_path.clone(),
                why,
            })?;
        let sig = Signature::decode(&text).map_err(|e| FileRefusal::MalformedSignature {
            path: sig_path.clone(),
            why: e.to_string(),
        })?;
        let key_id = signature_key_id(&text).ok_or_else(|| FileRefusal::MalformedSignature {
            path: sig_path.clone(),
            why: "no key id".into(),
        })?;
        let Some(key) = self.keys.iter().find(|k| k.key_id == key_id) else {
            return Err(FileRefusal::UntrustedKey {
                path: sig_path,
                key_id,
                dir: match self.skipped.len() {
                    0 => self.dir.clone(),
                    n => PathBuf::from(format!(
                        "{} ({n} key file(s) or the directory there not used: see the log)",
                        self.dir.display()
                    )),
                },
            });
        };
        key.key
            .verify(bytes, &sig, false)
            .map_err(|e| FileRefusal::BadSignature {
                path: sig_path,
                key: key.name.clone(),
                why: e.to_string(),
            })?;
        Ok(Some(key))
    }
}

/// Reads a small regular file owned and moded as probe files must be.
fn read_small(path: &Path, owners: &Owners) -> Result<String, String> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    owners.check(path, &m).map_err(|r| r.to_string())?;
    let mut text = String::new();
    f.take(SMALL_FILE_CAP)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

fn read_key(path: &Path, owners: &Owners) -> Result<TrustedKey, String> {
    let text = read_small(path, owners)?;
    let key = PublicKey::decode(&text).map_err(|e| e.to_string())?;
    let key_id = public_key_id(&text).ok_or("no key id")?;
    Ok(TrustedKey {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        key_id,
        key,
    })
}

/// The key id of a minisign public key file: bytes 2..10 of its base64
/// line (after the 2-byte algorithm), printed as minisign prints it.
fn public_key_id(text: &str) -> Option<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))?;
    key_id_of(line)
}

/// The key id a minisign signature names (its first base64 line).
fn signature_key_id(text: &str) -> Option<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))?;
    key_id_of(line)
}

fn key_id_of(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let id: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
    // As minisign prints it: upper-case hex, no leading zeros.
    Some(format!("{:X}", u64::from_le_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> Owners {
        Owners::of(&[rustix::process::geteuid().as_raw()])
    }

    #[test]
    fn a_file_or_directory_others_can_write_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("probes");
        std::fs::create_dir(&top).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = top.join("p.wasm");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, m) = open_probe_file(&f).unwrap();
        assert_eq!(check_tree(&f, &m, &top, &me()), Ok(()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        let (_, m) = open_probe_file(&f).unwrap();
        assert!(matches!(
            check_tree(&f, &m, &top, &me()),
            Err(FileRefusal::Writable { mode: 0o664, .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o757)).unwrap();
        let (_, m) = open_probe_file(&f).unwrap();
        let r = check_tree(&f, &m, &top, &me()).unwrap_err();
        assert!(r.to_string().contains("writable by everyone"), "{r}");
        // Someone else's.
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_, m) = open_probe_file(&f).unwrap();
        let r = check_tree(&f, &m, &top, &Owners::of(&[4242])).unwrap_err();
        assert!(matches!(r, FileRefusal::Owner { .. }), "{r}");
    }

    #[test]
    fn a_pin_holds_only_its_digest() {
        assert_eq!(check_pin("p", None, "ab"), Ok(()));
        assert_eq!(check_pin("p", Some("AB"), "ab"), Ok(()));
        let r = check_pin("p", Some("cd"), "ab").unwrap_err();
        assert!(r.to_string().starts_with("digest mismatch"), "{r}");
    }

    #[test]
    fn key_ids_read_as_minisign_prints_them() {
        // A public key from minisign's own documentation.
        let text = "untrusted comment: minisign public key\nRWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";
        assert_eq!(public_key_id(text).as_deref(), Some("E7620F1842B4E81F"));
    }
}
