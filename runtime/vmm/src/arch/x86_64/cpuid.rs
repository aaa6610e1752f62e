//! CPUID for a vCPU: what KVM supports on this host (which includes the KVM
//! paravirt leaves 0x4000_0000/0x4000_0001, so the guest finds kvmclock),
//! with the per-vCPU APIC ids, the processor count and the hypervisor bit.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_EXTENDED_TOPOLOGY_V2: u32 = 0x1f;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX bit 24: the LAPIC timer has TSC-deadline mode. KVM emulates
/// it but leaves it out of the supported list; without it Linux calibrates
/// the LAPIC timer against the PIT (about 0.3 s in the nested test host).
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// The host's supported CPUID list, fetched once per VM.
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// `supported` with what KVM emulates but does not list: the TSC-deadline
/// timer, when `tsc_deadline` (KVM_CAP_TSC_DEADLINE_TIMER).
pub fn with_emulated(mut supported: CpuId, tsc_deadline: bool) -> CpuId {
    for entry in supported.as_mut_slice() {
        if entry.function == LEAF_FEATURES && tsc_deadline {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }
    supported
}

/// `supported` adjusted for vCPU `index` of `count`.
pub fn for_vcpu(supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(count) << 16) | (u32::from(index) << 24);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_TOPOLOGY => {
                // Cores per package minus one in EAX[31:26]; keep the
                // cache description bits KVM gave.
                let cores = u32::from(count.max(1) - 1) & 0x3f;
                entry.eax = (entry.eax & 0x03ff_ffff) | (cores << 26);
            }
            LEAF_EXTENDED_TOPOLOGY | LEAF_EXTENDED_TOPOLOGY_V2 => {
                entry.edx = u32::from(index);
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn list() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: LEAF_FEATURES,
                ebx: 0xff00_0800,
                edx: EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_EXTENDED_TOPOLOGY,
                edx: 7,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_count() {
        let cpuid = for_vcpu(&list(), 2, 4);
        let leaf1 = cpuid.as_slice()[0];
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "the CLFLUSH size stays");
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & EDX_HTT, 0);
        assert_eq!(cpuid.as_slice()[1].edx, 2);
    }

    #[test]
    fn tsc_deadline_is_added_when_kvm_emulates_it() {
        let with = with_emulated(list(), true);
        assert_ne!(with.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        let without = with_emulated(list(), false);
        assert_eq!(without.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn a_single_vcpu_is_not_hyperthreaded() {
        let leaf1 = for_vcpu(&list(), 0, 1).as_slice()[0];
        assert_eq!(leaf1.edx & EDX_HTT, 0);
    }
}
