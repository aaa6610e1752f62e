//! The sandbox: what runs on the host for one VM ([`instance`]: the VM, its
//! share ([`share`]), the agent connection shared by its threads
//! ([`agent_mux`]) and what it delivers routed ([`router`]), the containers
//! in it). The runc-compatible CLI's monitor process ([`monitor`]) holds
//! one per container; stdio relays ([`stdio`], [`tty`]),
//! signal forwarding ([`signals`]), the VM's size ([`sizing`]), its network
//! namespace ([`netns`]) and the network carried from it into the VM
//! ([`network`]), where its sockets live ([`socket_dir`]), the control
//! socket the other commands use ([`control`]), and what a killed monitor
//! left running ([`strays`]).

pub mod agent_mux;
pub mod control;
pub mod exec_relay;
pub mod host_cgroup;
pub mod instance;
pub mod monitor;
pub mod netns;
pub mod network;
pub mod router;
pub mod share;
pub mod signals;
pub mod sizing;
pub mod socket_dir;
pub mod stdio;
pub mod strays;
pub mod tty;
