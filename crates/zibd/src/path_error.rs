//! Leaf: an I/O failure on a path, saying what was being done ("cannot read state file
//! /var/lib/zib/tank+a.json: ..."). The error types of the adapters (control socket, state
//! store, restore) carry it instead of each having its own copy.

use std::{
    io,
    path::{Path, PathBuf},
};

/// What failed, on which path, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct PathError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// For `map_err`: turns an `io::Error` of `action` on `path` into a [`PathError`].
pub fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> PathError + 'a {
    move |source| PathError { action, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_where_and_why() {
        let e = io_err("cannot read", Path::new("/x/y.json"))(io::Error::from(
            io::ErrorKind::PermissionDenied,
        ));
        assert_eq!(e.to_string(), "cannot read /x/y.json: permission denied");
    }
}
