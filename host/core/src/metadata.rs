//! Host metadata: the header values that describe the machine, computed as
//! the legacy library did (`docs/legacy-protocol.md` §2.1) so the collector sees
//! the same facts from the new client.
//!
//! Every file is read relative to an injectable root, so tests use a fake
//! `/etc`, `/sys` and `/proc`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::record::{Header, Headers, MAX_SYSTEM_NAME_LEN};

/// Kernel facts normally from `uname(2)`; injectable for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uname {
    /// `uname -m`
    pub machine: String,
    /// `uname -r`
    pub release: String,
}

impl Uname {
    /// The running kernel's values.
    pub fn current() -> Uname {
        let u = rustix::system::uname();
        Uname {
            machine: u.machine().to_string_lossy().into_owned(),
            release: u.release().to_string_lossy().into_owned(),
        }
    }
}

/// The machine-describing header values (everything but the per-record ones).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct HostMetadata {
    pub arch: String,
    pub host_type: String,
    pub build: String,
    pub kernel_version: String,
    pub system_name: String,
    pub board_name: String,
    pub cpu_model: String,
    pub bios_version: String,
}

impl HostMetadata {
    /// Reads the metadata of the machine whose filesystem is at `root`
    /// (normally `/`), with the running kernel's uname.
    pub fn collect(root: &Path) -> HostMetadata {
        Self::collect_with(root, Uname::current())
    }

    /// Like [`HostMetadata::collect`] with an explicit uname.
    pub fn collect_with(root: &Path, uname: Uname) -> HostMetadata {
        let dmi = |name: &str, missing: &str| {
            read_value(&root.join("sys/class/dmi/id").join(name))
                .unwrap_or_else(|| missing.to_owned())
        };
        let os_release = read_os_release(root);
        let (build, system_name) = match &os_release {
            Some(text) => {
                let build = os_release_value(text, "VERSION_ID")
                    .unwrap_or("0")
                    .to_owned();
                let system_name = match os_release_value(text, "ID") {
                    Some(id) => {
                        let id = unquote(id);
                        let mut name = match os_release_value(text, "VARIANT_ID") {
                            Some(v) => format!("{id}_{}", unquote(v)),
                            None => id.to_owned(),
                        };
                        truncate(&mut name, MAX_SYSTEM_NAME_LEN);
                        name
                    }
                    None => "unknown".to_owned(),
                };
                (build, system_name)
            }
            None => ("0".to_owned(), "unknown".to_owned()),
        };
        HostMetadata {
            arch: sanitize(&uname.machine),
            host_type: format!(
                "{}|{}|{}",
                dmi("sys_vendor", "no_sv_file"),
                dmi("product_name", "no_pn_file"),
                dmi("product_version", "no_pvr_file")
            ),
            build: sanitize(&build),
            kernel_version: sanitize(&uname.release),
            system_name: sanitize(&system_name),
            board_name: format!(
                "{}|{}",
                dmi("board_name", "no_bn_file"),
                dmi("board_vendor", "no_bv_file")
            ),
            cpu_model: cpu_model(root),
            bios_version: dmi("bios_version", "no_bv_file"),
        }
    }

    /// Writes these values into the matching headers of a record.
    pub fn apply(&self, h: &mut Headers) {
        h.set(Header::Arch, self.arch.as_str());
        h.set(Header::HostType, self.host_type.as_str());
        h.set(Header::Build, self.build.as_str());
        h.set(Header::KernelVersion, self.kernel_version.as_str());
        h.set(Header::SystemName, self.system_name.as_str());
        h.set(Header::BoardName, self.board_name.as_str());
        h.set(Header::CpuModel, self.cpu_model.as_str());
        h.set(Header::BiosVersion, self.bios_version.as_str());
    }
}

fn read_os_release(root: &Path) -> Option<String> {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| fs::read_to_string(root.join(p)).ok())
}

/// The raw value of `KEY=value` in os-release text (quotes kept).
fn os_release_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim_start().split_once('=')?;
        (k == key).then(|| v.trim_end())
    })
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

fn cpu_model(root: &Path) -> String {
    let text = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| sanitize(v.trim()))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// First line of a sysfs file, trimmed; `None` when it cannot be read.
fn read_value(path: &PathBuf) -> Option<String> {
    let text = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    Some(sanitize(text.lines().next().unwrap_or("").trim()))
}

/// Header values must be printable ASCII on one line; firmware strings are
/// not always, so anything else becomes `?` rather than breaking a record.
fn sanitize(v: &str) -> String {
    let mut s: String = v
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    truncate(&mut s, crate::record::MAX_HEADER_VALUE_LEN);
    s
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uname() -> Uname {
        Uname {
            machine: "x86_64".into(),
            release: "6.18.44-fc-v782".into(),
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn empty_root_gives_legacy_placeholders() {
        let root = tempfile::tempdir().unwrap();
        let m = HostMetadata::collect_with(root.path(), uname());
        assert_eq!(m.host_type, "no_sv_file|no_pn_file|no_pvr_file");
        assert_eq!(m.board_name, "no_bn_file|no_bv_file");
        assert_eq!(m.bios_version, "no_bv_file");
        assert_eq!(m.build, "0");
        assert_eq!(m.system_name, "unknown");
        assert_eq!(m.cpu_model, "unknown");
        assert_eq!(m.arch, "x86_64");
        assert_eq!(m.kernel_version, "6.18.44-fc-v782");
    }

    #[test]
    fn full_fake_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            r,
            "etc/os-release",
            "NAME=\"Debian\"\nID=debian\nVERSION_ID=\"12\"\nVARIANT_ID=server\n",
        );
        write(r, "usr/lib/os-release", "ID=other\nVERSION_ID=99\n");
        write(r, "sys/class/dmi/id/sys_vendor", "QEMU\n");
        write(
            r,
            "sys/class/dmi/id/product_name",
            "Standard PC (Q35 + ICH9, 2009)\n",
        );
        write(r, "sys/class/dmi/id/product_version", "pc-q35-8.2\n");
        write(r, "sys/class/dmi/id/board_name", "X570\n");
        write(r, "sys/class/dmi/id/board_vendor", "ASUS\n");
        write(r, "sys/class/dmi/id/bios_version", "1.16.3-debian\n");
        write(
            r,
            "proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: other\n",
        );
        let m = HostMetadata::collect_with(r, uname());
        assert_eq!(
            m.build, "\"12\"",
            "VERSION_ID is kept as written, quotes included"
        );
        assert_eq!(m.system_name, "debian_server");
        assert_eq!(
            m.host_type,
            "QEMU|Standard PC (Q35 + ICH9, 2009)|pc-q35-8.2"
        );
        assert_eq!(m.board_name, "X570|ASUS");
        assert_eq!(m.bios_version, "1.16.3-debian");
        assert_eq!(m.cpu_model, "AMD EPYC 7B13 64-Core Processor");
    }

    #[test]
    fn os_release_falls_back_to_usr_lib_and_partial_dmi() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            r,
            "usr/lib/os-release",
            "ID=\"clear-linux-os\"\nVERSION_ID=29560\n",
        );
        write(r, "sys/class/dmi/id/product_name", "NUC\n");
        write(r, "sys/class/dmi/id/board_vendor", "Intel\n");
        let m = HostMetadata::collect_with(r, uname());
        assert_eq!(m.build, "29560");
        assert_eq!(m.system_name, "clear-linux-os");
        assert_eq!(m.host_type, "no_sv_file|NUC|no_pvr_file");
        assert_eq!(m.board_name, "no_bn_file|Intel");
    }

    #[test]
    fn long_system_name_is_cut_and_junk_is_sanitized() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            r,
            "etc/os-release",
            &format!("ID={}\nVARIANT_ID=x\n", "a".repeat(100)),
        );
        write(r, "sys/class/dmi/id/sys_vendor", "Bad\u{1}Vendor\u{e9}\n");
        let m = HostMetadata::collect_with(r, uname());
        assert_eq!(m.system_name.len(), 80);
        assert_eq!(m.host_type, "Bad?Vendor?|no_pn_file|no_pvr_file");
    }

    #[test]
    fn apply_fills_headers() {
        let root = tempfile::tempdir().unwrap();
        let m = HostMetadata::collect_with(root.path(), uname());
        let mut h = Headers::default();
        m.apply(&mut h);
        assert_eq!(h.get(Header::Arch), "x86_64");
        assert_eq!(h.get(Header::BiosVersion), "no_bv_file");
    }
}
