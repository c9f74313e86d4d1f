//! The legacy privacy filters: which crashes keep their core and which
//! send only a short record, decided on the executable's path before
//! anything of the crash is kept.

/// What the privacy filters make of an executable path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// A distribution binary: the core is kept and symbolized.
    Keep,
    /// Outside `/usr/` or under `/usr/local/`: only a short record.
    ThirdParty,
    /// Under the package build root: only a short record.
    PackageBuild,
}

impl Filter {
    /// The short record a filtered crash sends instead of its backtrace.
    pub fn short_record(self) -> Option<(&'static str, u8, &'static str)> {
        match self {
            Filter::Keep => None,
            Filter::ThirdParty => {
                Some(("org.clearlinux/crash/unknown", 2, "Crash from third party"))
            }
            Filter::PackageBuild => Some((
                "org.clearlinux/crash/clr-build",
                2,
                "Crash from Clear package build",
            )),
        }
    }
}

/// The legacy privacy filters on `%E` (with `!` already turned into `/`).
/// An unknown path is third party: nothing says it came from the system.
pub fn privacy_filter(exe: Option<&str>) -> Filter {
    match exe {
        Some(p) if p.starts_with("/builddir/build/BUILD/") => Filter::PackageBuild,
        Some(p)
            if p.starts_with("/usr/") && !p.starts_with("/usr/local/") && !p.contains("/../") =>
        {
            Filter::Keep
        }
        _ => Filter::ThirdParty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_filters_follow_the_legacy_rules() {
        assert_eq!(privacy_filter(Some("/usr/bin/crashme")), Filter::Keep);
        assert_eq!(privacy_filter(Some("/usr/local/bin/x")), Filter::ThirdParty);
        assert_eq!(privacy_filter(Some("/home/u/a.out")), Filter::ThirdParty);
        assert_eq!(privacy_filter(Some("/usr/../home/u/a")), Filter::ThirdParty);
        assert_eq!(privacy_filter(None), Filter::ThirdParty);
        assert_eq!(
            privacy_filter(Some("/builddir/build/BUILD/pkg/test")),
            Filter::PackageBuild
        );
    }

    #[test]
    fn filtered_crashes_send_the_legacy_short_records() {
        assert_eq!(Filter::Keep.short_record(), None);
        assert_eq!(
            Filter::ThirdParty.short_record(),
            Some(("org.clearlinux/crash/unknown", 2, "Crash from third party"))
        );
        assert_eq!(
            Filter::PackageBuild.short_record(),
            Some((
                "org.clearlinux/crash/clr-build",
                2,
                "Crash from Clear package build"
            ))
        );
    }
}
