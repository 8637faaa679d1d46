//! Discovery: what the plugin libraries of a directory offer. Every library
//! is opened by a sandboxed worker of its own — the host never `dlopen`s a
//! file it found — so a directory of untrusted files can be listed safely.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{LoadError, LoadFailure};
use crate::plugin::{Plugin, PluginInfo, PluginSpec};
use crate::supervisor::Supervisor;

/// One library found by [`Supervisor::discover`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Discovered {
    /// The library's path (in the directory, as listed).
    pub path: PathBuf,
    /// Every plugin of its registry, as its worker reported it, or why the
    /// library could not be inspected (it crashed, hung, is not a fidius
    /// library, failed its signature check, ...).
    pub plugins: Result<Vec<PluginInfo>, LoadError>,
}

impl Supervisor {
    /// Every plugin in the library of `spec` (its [`plugin`](PluginSpec::plugin)
    /// name ignored): each loaded in a worker of its own with `spec`'s settings
    /// (sandbox, signature keys, timeouts), its [`PluginInfo`] taken, and the
    /// worker stopped. Registry order.
    pub fn inspect(&self, spec: &PluginSpec) -> Result<Vec<PluginInfo>, LoadError> {
        let load = |name: Option<&str>| -> Result<Plugin, LoadError> {
            let mut s = spec.clone();
            s.plugin = name.map(str::to_string);
            self.load(s)
        };
        let (first, names) = match load(None) {
            Ok(p) => {
                let info = p.info();
                let names = info.plugins_in_library.clone();
                (Some(info), names)
            }
            Err(LoadError::Rejected {
                reason: LoadFailure::Ambiguous { available },
                ..
            }) => (None, available),
            Err(e) => return Err(e),
        };
        let mut infos = Vec::with_capacity(names.len());
        for name in &names {
            match &first {
                Some(i) if &i.plugin_name == name => infos.push(i.clone()),
                _ => infos.push(load(Some(name))?.info()),
            }
        }
        Ok(infos)
    }

    /// The plugin libraries (`*.so` files, symbolic links followed) directly
    /// in `dir`, by name, each [inspected](Self::inspect) in its own sandboxed
    /// worker with the default [`PluginSpec`]. Like fidius-host's
    /// `PluginHost::discover`, but a library that crashes, hangs or lies costs
    /// its worker and is reported in its [`Discovered::plugins`]; only reading
    /// the directory itself can fail.
    pub fn discover(&self, dir: impl AsRef<Path>) -> io::Result<Vec<Discovered>> {
        self.discover_with(dir, |path| PluginSpec::new(path))
    }

    /// [`discover`](Self::discover) with the spec `spec_for(path)` for each
    /// library (grants, signature keys, timeouts).
    pub fn discover_with(
        &self,
        dir: impl AsRef<Path>,
        spec_for: impl Fn(&Path) -> PluginSpec,
    ) -> io::Result<Vec<Discovered>> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let is_library =
                path.extension().is_some_and(|e| e == "so") && std::fs::metadata(&path).is_ok_and(|m| m.is_file());
            if is_library {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|path| {
                let plugins = self.inspect(&spec_for(&path));
                Discovered { path, plugins }
            })
            .collect())
    }
}
