//! `containerd-shim-husk-v2`: containerd's shim v2 for husk, one VM per
//! pod. See [`husk::shim`].

fn main() {
    husk::shim::run();
}
