//! Seccomp filters, compiled to BPF once (seccompiler) and installed per
//! thread.
//!
//! An [`Filter::allow_only`] list names every syscall a thread makes, some
//! only with given arguments; any other kills the whole process (SIGSYS,
//! which its parent sees as the cause of death). A
//! [`Filter::deny`] list is for helpers husk does not build and cannot
//! list the needs of: the calls no helper of a VM has any business making
//! fail with `EPERM`.
//!
//! [`Filter::apply`] allocates nothing and is async-signal-safe, so a
//! forked child may install a filter before exec. Filters stack: a thread
//! started by a filtered thread has its parent's filter too.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// One allowed syscall: always, or only when one of `when` matches.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The syscall number (`libc::SYS_*`).
    pub syscall: i64,
    /// Argument rules, any of which allows it (empty: always).
    pub when: Vec<ArgRule>,
}

/// Conditions on arguments, all of which must hold.
#[derive(Debug, Clone, Default)]
pub struct ArgRule(Vec<(u8, u64)>);

impl ArgRule {
    /// Argument `index` equals `value` (its low 32 bits when `value`
    /// fits in them).
    pub fn arg(mut self, index: u8, value: u64) -> ArgRule {
        self.0.push((index, value));
        self
    }

    fn compile(&self) -> Result<SeccompRule, seccompiler::BackendError> {
        let conditions = self
            .0
            .iter()
            .map(|&(index, value)| {
                // The kernel reads int arguments (ioctl requests, fcntl and
                // prctl commands) from the low half of the register.
                let len = if value <= u64::from(u32::MAX) {
                    SeccompCmpArgLen::Dword
                } else {
                    SeccompCmpArgLen::Qword
                };
                SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        SeccompRule::new(conditions)
    }
}

/// `syscall`, whatever its arguments.
pub fn always(syscall: i64) -> Allowed {
    Allowed {
        syscall,
        when: Vec::new(),
    }
}

/// `syscall` when argument `index` is one of `values`.
pub fn when_arg(syscall: i64, index: u8, values: &[u64]) -> Allowed {
    Allowed {
        syscall,
        when: values
            .iter()
            .map(|&v| ArgRule::default().arg(index, v))
            .collect(),
    }
}

/// A filter that cannot be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// seccompiler refused the rules.
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct Filter(BpfProgram);

impl Filter {
    /// Allows `list` only: anything else kills the process. A syscall
    /// listed twice is allowed when either entry allows it.
    pub fn allow_only(list: &[Allowed]) -> Result<Filter, FilterError> {
        let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
        for allowed in list {
            // `None`: unconditional, whatever else is listed for it.
            let entry = rules
                .entry(allowed.syscall)
                .or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), allowed.when.is_empty()) {
                (_, true) => *entry = None,
                (None, false) => {}
                (Some(chain), false) => {
                    for rule in &allowed.when {
                        chain.push(rule.compile()?);
                    }
                }
            }
        }
        let rules = rules
            .into_iter()
            .map(|(syscall, chain)| (syscall, chain.unwrap_or_default()))
            .collect();
        Self::compile(rules, SeccompAction::KillProcess, SeccompAction::Allow)
    }

    /// Makes `syscalls` fail with `EPERM`; everything else is allowed.
    pub fn deny(syscalls: &[i64]) -> Result<Filter, FilterError> {
        Self::fail(syscalls, libc::EPERM)
    }

    /// Makes `syscalls` fail with `errno`; everything else is allowed.
    /// Stacked with an [`Filter::allow_only`] list that allows them, they
    /// fail (the kernel takes the stricter answer of the two filters).
    pub fn fail(syscalls: &[i64], errno: i32) -> Result<Filter, FilterError> {
        let rules = syscalls.iter().map(|&s| (s, Vec::new())).collect();
        Self::compile(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
        )
    }

    fn compile(
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        mismatch: SeccompAction,
        matched: SeccompAction,
    ) -> Result<Filter, FilterError> {
        let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)?;
        let program: BpfProgram = filter.try_into()?;
        Ok(Filter(program))
    }

    /// The BPF instructions as `(code, jt, jf, k)`, for a build script to
    /// write out (see [`Filter::from_instructions`]).
    pub fn instructions(&self) -> Vec<(u16, u8, u8, u32)> {
        self.0.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    }

    /// The filter of instructions [`Filter::instructions`] gave, with the
    /// `k` of the instructions at `patch` replaced by `value`: a filter
    /// compiled at build time with a placeholder where a runtime value
    /// (the process's own pid) goes, ready without compiling.
    pub fn from_instructions(
        instructions: &[(u16, u8, u8, u32)],
        patch: &[usize],
        value: u32,
    ) -> Filter {
        let mut program: BpfProgram = instructions
            .iter()
            .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
            .collect();
        for &index in patch {
            program[index].k = value;
        }
        Filter(program)
    }

    /// Installs the filter on the calling thread (and sets no_new_privs,
    /// which installing needs without CAP_SYS_ADMIN). Async-signal-safe.
    pub fn apply(&self) -> Result<(), FilterError> {
        seccompiler::apply_filter(&self.0)?;
        Ok(())
    }
}

/// What no helper of a VM needs, for [`Filter::deny`]: changing the
/// system (mounts, modules, kexec, reboot, time, swap, the host name),
/// other processes (ptrace, process_vm_*), new privileges or namespaces,
/// the kernel's keyring, BPF and perf.
pub const DENIED_TO_HELPERS: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_lookup_dcookie,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_syslog,
    libc::SYS_vhangup,
];

#[cfg(test)]
mod tests;
