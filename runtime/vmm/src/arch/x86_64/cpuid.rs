//! CPUID for a vCPU: what KVM supports on this host (which includes the KVM
//! paravirt leaves 0x4000_0000/0x4000_0001, so the guest finds kvmclock),
//! with the per-vCPU APIC ids, the processor count and the hypervisor bit,
//! and the host's processor brand string where KVM leaves it out.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
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

/// The three leaves holding the 48-byte processor brand string.
const LEAVES_BRAND: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];

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

/// The host CPU's brand string leaves, as (eax, ebx, ecx, edx) each.
pub fn host_brand() -> [[u32; 4]; 3] {
    LEAVES_BRAND.map(|leaf| {
        // A leaf beyond the CPU's range reads as zeros or as its highest
        // basic leaf: a wrong brand, never a fault.
        let r = std::arch::x86_64::__cpuid(leaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    })
}

/// `supported` with the brand string filled from `brand` where KVM listed
/// none (Linux then names the CPU after its family, e.g. "AMD Hammer", in
/// the guest's /proc/cpuinfo). A brand KVM did list is kept.
pub fn with_brand(mut supported: CpuId, brand: [[u32; 4]; 3]) -> CpuId {
    let listed = |cpuid: &CpuId, leaf: u32| {
        cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == leaf && (e.eax | e.ebx | e.ecx | e.edx) != 0)
    };
    if LEAVES_BRAND.iter().any(|&leaf| listed(&supported, leaf)) {
        return supported;
    }
    for (leaf, [eax, ebx, ecx, edx]) in LEAVES_BRAND.into_iter().zip(brand) {
        let entry = kvm_cpuid_entry2 {
            function: leaf,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        match supported
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == leaf)
        {
            Some(existing) => *existing = entry,
            // A full list keeps its entries; the brand is cosmetic.
            None => {
                let _ = supported.push(entry);
            }
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

    fn brand_text(cpuid: &CpuId) -> String {
        let bytes: Vec<u8> = LEAVES_BRAND
            .iter()
            .flat_map(|&leaf| {
                let e = cpuid
                    .as_slice()
                    .iter()
                    .find(|e| e.function == leaf)
                    .unwrap();
                [e.eax, e.ebx, e.ecx, e.edx]
            })
            .flat_map(u32::to_le_bytes)
            .collect();
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_string()
    }

    fn brand_of(text: &str) -> [[u32; 4]; 3] {
        let mut bytes = [0u8; 48];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        [0, 1, 2].map(|leaf| [0, 1, 2, 3].map(|reg| word(leaf * 4 + reg)))
    }

    #[test]
    fn a_missing_brand_string_comes_from_the_host() {
        let cpuid = with_brand(list(), brand_of("Husk Test CPU @ 1.00GHz"));
        assert_eq!(brand_text(&cpuid), "Husk Test CPU @ 1.00GHz");
        assert_eq!(cpuid.as_slice().len(), 2 + 3);
    }

    #[test]
    fn a_brand_kvm_listed_is_kept() {
        let kvm_brand = with_brand(list(), brand_of("From KVM"));
        let again = with_brand(kvm_brand, brand_of("From the host"));
        assert_eq!(brand_text(&again), "From KVM");
    }

    #[test]
    fn zeroed_brand_leaves_are_filled_in_place() {
        let mut entries = list().as_slice().to_vec();
        entries.extend(LEAVES_BRAND.map(|function| kvm_cpuid_entry2 {
            function,
            ..Default::default()
        }));
        let cpuid = with_brand(CpuId::from_entries(&entries).unwrap(), brand_of("Filled"));
        assert_eq!(brand_text(&cpuid), "Filled");
        assert_eq!(cpuid.as_slice().len(), 5);
    }
}
