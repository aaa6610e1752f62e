//! The virtio-fs device: connects to the backend when created (so a missing
//! virtiofsd is reported before the guest boots) and hands it the rings on
//! activation.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{
    FsError, BACKEND_START_TIMEOUT, NUM_QUEUES, QUEUE_SIZE, TAG_LEN, VHOST_USER_F_PROTOCOL_FEATURES,
};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, TYPE_FS,
};
use crate::vstate::memory::GuestMemory;

/// virtio-fs backed by a vhost-user backend.
pub struct Fs {
    socket: PathBuf,
    config: [u8; TAG_LEN + 4],
    frontend: Option<Frontend>,
    backend_features: u64,
    acked_features: u64,
    /// The backend and the queues it serves, kept while active.
    active: Option<Vec<ActiveQueue>>,
}

impl Fs {
    /// Connects to the backend at `socket`; the guest mounts it by `tag`.
    pub fn connect(socket: &Path, tag: &str) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.into()));
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let step = |what| {
            move |source| FsError::Backend {
                socket: socket.to_path_buf(),
                what,
                source,
            }
        };
        let frontend = connect(socket).map_err(step("connect"))?;
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        Ok(Fs {
            socket: socket.to_path_buf(),
            config,
            frontend: Some(frontend),
            backend_features,
            acked_features: 0,
            active: None,
        })
    }

    fn start_backend(
        &mut self,
        memory: &GuestMemory,
        queues: &[ActiveQueue],
        interrupt: &Interrupt,
    ) -> Result<(), String> {
        let frontend = self
            .frontend
            .as_mut()
            .ok_or("the backend cannot be activated after a reset")?;
        fn step(what: &'static str) -> impl Fn(vhost::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        let protocol = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        frontend
            .set_features(self.acked_features | protocol)
            .map_err(step("SET_FEATURES"))?;
        if protocol != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::MQ)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
        }
        let regions = memory
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(step("describing guest memory"))?;
        frontend
            .set_mem_table(&regions)
            .map_err(step("SET_MEM_TABLE"))?;
        for (index, active) in queues.iter().enumerate() {
            let queue = &active.queue;
            let host_addr = |gpa: u64| {
                memory
                    .get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|e| format!("queue {index} address {gpa:#x}: {e}"))
            };
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host_addr(queue.desc_table())?,
                used_ring_addr: host_addr(queue.used_ring())?,
                avail_ring_addr: host_addr(queue.avail_ring())?,
                log_addr: None,
            };
            frontend
                .set_vring_num(index, queue.size())
                .map_err(step("SET_VRING_NUM"))?;
            frontend
                .set_vring_addr(index, &config)
                .map_err(step("SET_VRING_ADDR"))?;
            frontend
                .set_vring_base(index, queue.next_avail())
                .map_err(step("SET_VRING_BASE"))?;
            frontend
                .set_vring_call(index, interrupt.irqfd())
                .map_err(step("SET_VRING_CALL"))?;
            frontend
                .set_vring_kick(index, &active.kick)
                .map_err(step("SET_VRING_KICK"))?;
            if protocol != 0 {
                frontend
                    .set_vring_enable(index, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

/// Connects to a backend that may still be starting: its socket may not
/// exist yet or not accept yet, for up to [`BACKEND_START_TIMEOUT`].
fn connect(socket: &Path) -> Result<Frontend, vhost::Error> {
    let deadline = Instant::now() + BACKEND_START_TIMEOUT;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(Frontend::from_stream(stream, NUM_QUEUES as u64)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(vhost::Error::VhostUserProtocol(
                    vhost::vhost_user::Error::SocketConnect(e),
                ))
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                device: "fs",
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        self.start_backend(&memory, &queues, &interrupt)
            .map_err(|message| ActivateError::Backend {
                device: "fs",
                message: format!("{}: {message}", self.socket.display()),
            })?;
        self.active = Some(queues);
        Ok(())
    }

    fn reset(&mut self) {
        // virtiofsd serves one frontend connection; after a reset the
        // device stays down (a guest resets it only when shutting down).
        if let (Some(frontend), Some(queues)) = (self.frontend.as_mut(), self.active.take()) {
            for index in 0..queues.len() {
                let _ = frontend.get_vring_base(index);
            }
        }
        self.frontend = None;
    }

    fn interrupts_bypass_status(&self) -> bool {
        true
    }
}
