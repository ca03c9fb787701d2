//! hearth-image: the guest kernel, template root filesystems and the
//! copy-on-write disks of sandboxes.
//!
//! Everything here is synchronous and drives external tools (`make`,
//! `mmdebstrap`, `mkfs.ext4`, `qemu-img`); callers report progress through
//! [`Progress`].

mod disk;
mod kernel;
mod progress;
mod template;
mod tool;

pub use disk::{DiskError, ImageFormat, create_overlay};
pub use kernel::{Kernel, KernelError, KernelOptions, build_kernel, current_kernel, list_kernels};
pub use progress::{NoProgress, Progress};
pub use template::{
    Template, TemplateError, TemplateOptions, build_base_template, find_template, list_templates,
};
pub use tool::ToolError;
