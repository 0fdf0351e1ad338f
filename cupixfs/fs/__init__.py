"""The filesystem the kernel sees: `fuse_ops` translates FUSE requests, `vfs` joins the
namespace (the tree) to the data layer (the bytes)."""
