//! What the host offers for running VMs: hardware virtualization, PVM (a
//! paravirtual KVM that runs only patched guest kernels), or neither.
//!
//! Facts come from `/proc/cpuinfo` (the `vmx`/`svm` flags), `/dev/kvm` and
//! `/sys/module` (the `kvm_pvm` module).

use std::path::Path;

/// How KVM can be used on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Virtualization {
    /// The CPU has VT-x or AMD-V and /dev/kvm is there: stock guests run.
    Hardware {
        /// `vmx` or `svm`.
        cpu_flag: &'static str,
    },
    /// /dev/kvm is PVM: it does not boot a stock Linux guest.
    Pvm,
    /// No usable /dev/kvm.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl Virtualization {
    /// Probes the running host.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::classify(
            &cpuinfo,
            Path::new("/dev/kvm").exists(),
            Path::new("/sys/module/kvm_pvm").exists(),
        )
    }

    /// Decides from the raw facts (separate for tests).
    pub fn classify(cpuinfo: &str, dev_kvm: bool, pvm_module: bool) -> Self {
        if !dev_kvm {
            return Virtualization::Unavailable {
                reason: "/dev/kvm does not exist".into(),
            };
        }
        if pvm_module {
            return Virtualization::Pvm;
        }
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default();
        for flag in ["vmx", "svm"] {
            if flags.contains(&flag) {
                return Virtualization::Hardware { cpu_flag: flag };
            }
        }
        Virtualization::Unavailable {
            reason: "/dev/kvm exists but the CPU shows neither vmx nor svm".into(),
        }
    }

    /// One line for `husk check`.
    pub fn describe(&self) -> String {
        match self {
            Virtualization::Hardware { cpu_flag } => {
                format!("hardware virtualization ({cpu_flag}) with /dev/kvm")
            }
            Virtualization::Pvm => "/dev/kvm is PVM (kvm_pvm module), a paravirtual KVM that \
                                    runs only PVM-patched guest kernels, not husk's stock guest"
                .into(),
            Virtualization::Unavailable { reason } => format!("no usable KVM: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
    const PLAIN: &str = "processor\t: 0\nflags\t\t: fpu vme sse\n";

    #[test]
    fn vmx_with_dev_kvm_is_hardware() {
        assert_eq!(
            Virtualization::classify(INTEL, true, false),
            Virtualization::Hardware { cpu_flag: "vmx" }
        );
    }

    #[test]
    fn pvm_module_wins_over_flags() {
        assert_eq!(
            Virtualization::classify(INTEL, true, true),
            Virtualization::Pvm
        );
    }

    #[test]
    fn no_dev_kvm_is_unavailable() {
        assert!(matches!(
            Virtualization::classify(INTEL, false, false),
            Virtualization::Unavailable { .. }
        ));
    }

    #[test]
    fn dev_kvm_without_flags_is_unavailable() {
        let v = Virtualization::classify(PLAIN, true, false);
        assert!(v.describe().contains("neither vmx nor svm"), "{v:?}");
    }
}
