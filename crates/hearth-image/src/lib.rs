//! hearth-image: the guest kernel, template root filesystems and the
//! copy-on-write disks of sandboxes.
//!
//! Everything here is synchronous and drives external tools (`make`,
//! `mmdebstrap`, `mkfs.ext4`, `qemu-img`); callers report progress through
//! [`Progress`].

mod account;
mod context;
mod disk;
mod dockerfile;
mod kernel;
mod oci;
mod progress;
mod recipe;
pub mod sparse;
mod template;
mod tool;

pub use context::{
    ContextError, Entry, EntryKind, Ignore, files_hash, select, unpack_upload, write_tar,
};
pub use disk::{CopyKind, DiskError, ImageFormat, copy_raw, create_overlay, flatten};
pub use dockerfile::{DockerfileError, parse_dockerfile, parse_dockerfile_for_image};
pub use kernel::{Kernel, KernelError, KernelOptions, build_kernel, current_kernel, list_kernels};
pub use oci::{
    ImageSource, LayerBlob, OciError, PullOptions, PulledImage, RegistryAuth, UnpackError, pull,
    unpack,
};
pub use progress::{NoProgress, Progress};
pub use recipe::{
    Base, CommandLine, Recipe, RunConfig, SourcedStep, Step, guest_path, signal_number,
};
pub use template::{
    NewBuild, Template, TemplateError, TemplateOptions, TemplateRun, adopt_build,
    build_base_template, find_build, find_template, list_templates, make_ext4, prepare_tree,
    publish_build, set_current_build,
};
pub use tool::{ToolError, sha256_file};
