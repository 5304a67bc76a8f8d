//! The compiled policies the server decides with: one per tenant from `<tenant>.yaml` in the
//! policies folder, `default.yaml` for every other tenant. Reloading compiles the whole
//! folder first and swaps it in atomically only if every file compiles, so a request sees
//! either the old set or the new one, never a mix, and a bad edit changes nothing.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warden_policy::Policy;

/// The tenant whose policy applies to tenants without their own.
pub const DEFAULT_TENANT: &str = "default";

/// A policy as loaded: the compiled form and where it came from.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The compiled policy.
    pub policy: Policy,
    /// The file it was read from.
    pub path: PathBuf,
}

/// Every tenant's policy at one moment.
#[derive(Debug, Default)]
pub struct PolicySet {
    by_tenant: BTreeMap<String, Arc<LoadedPolicy>>,
}

impl PolicySet {
    /// The policy for `tenant`: its own, else `default`, else none.
    pub fn for_tenant(&self, tenant: &str) -> Option<&Arc<LoadedPolicy>> {
        self.by_tenant
            .get(tenant)
            .or_else(|| self.by_tenant.get(DEFAULT_TENANT))
    }

    /// Tenant names and their policy versions, in name order.
    pub fn versions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_tenant
            .iter()
            .map(|(t, p)| (t.as_str(), p.policy.version().as_str()))
    }

    /// Whether no policy is loaded.
    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }
}

/// Why a folder of policies was refused. Each line is `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct LoadError {
    /// Every problem found.
    pub problems: Vec<String>,
}

/// The live policies and the folder they come from.
#[derive(Debug)]
pub struct Policies {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    /// Reloads take turns, so a tenant's reload never undoes another's.
    reloading: std::sync::Mutex<()>,
}

impl Policies {
    /// Loads every policy in `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let set = load_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
            reloading: std::sync::Mutex::new(()),
        })
    }

    /// The set in force now. Cheap: an atomic load.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Recompiles the folder; swaps the new set in only if all of it compiles.
    pub fn reload(&self) -> Result<Arc<PolicySet>, LoadError> {
        let _turn = self.reloading.lock();
        let set = Arc::new(load_dir(&self.dir)?);
        self.current.store(Arc::clone(&set));
        Ok(set)
    }

    /// Recompiles `tenant`'s own file alone and swaps only that tenant: a tenant's admin
    /// reloads its policy without touching, seeing or being blocked by any other. Returns
    /// the new version, or `None` when the tenant has no file (any more) and so uses
    /// `default`.
    pub fn reload_tenant(&self, tenant: &str) -> Result<Option<String>, LoadError> {
        let _turn = self.reloading.lock();
        let mut files = Vec::new();
        for path in list(&self.dir)? {
            if tenant_of(&path).as_deref() == Some(tenant) && path.is_file() {
                files.push(path);
            }
        }
        let loaded = match files.as_slice() {
            [] => None,
            [path] => Some(Arc::new(compile(&self.dir, path)?)),
            [first, second, ..] => {
                return Err(LoadError {
                    problems: vec![format!(
                        "{}: tenant `{tenant}` already has a policy in {}",
                        relative(&self.dir, second),
                        relative(&self.dir, first)
                    )],
                });
            }
        };
        let version = loaded
            .as_ref()
            .map(|p| p.policy.version().as_str().to_owned());
        let mut set = PolicySet {
            by_tenant: self.current.load().by_tenant.clone(),
        };
        match loaded {
            Some(policy) => set.by_tenant.insert(tenant.to_owned(), policy),
            None => set.by_tenant.remove(tenant),
        };
        self.current.store(Arc::new(set));
        Ok(version)
    }

    /// The folder policies are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A tenant name from a file name: `acme.yaml` → `acme`. Test files and other extensions
/// are not policies.
fn tenant_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .or_else(|| name.strip_suffix(".json"))?;
    if stem.ends_with("_test") || stem.is_empty() || stem.starts_with('.') {
        return None;
    }
    Some(stem.to_owned())
}

/// A file's name relative to the policy folder: errors never show the server's paths.
fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// The folder's entries, sorted.
fn list(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let fail = |e: std::io::Error| LoadError {
        problems: vec![format!("the policy folder cannot be read: {e}")],
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        paths.push(entry.map_err(fail)?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Reads and compiles one policy file; problems name it relative to the folder.
fn compile(dir: &Path, path: &Path) -> Result<LoadedPolicy, LoadError> {
    let name = relative(dir, path);
    let source = std::fs::read_to_string(path).map_err(|e| LoadError {
        problems: vec![format!("{name}: cannot read: {e}")],
    })?;
    match Policy::parse(&source) {
        Ok(policy) => Ok(LoadedPolicy {
            policy,
            path: path.to_owned(),
        }),
        Err(errors) => Err(LoadError {
            problems: errors.iter().map(|e| format!("{name}:{e}")).collect(),
        }),
    }
}

fn load_dir(dir: &Path) -> Result<PolicySet, LoadError> {
    let mut set = PolicySet::default();
    let mut problems = Vec::new();
    for path in list(dir)? {
        let Some(tenant) = tenant_of(&path) else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        if let Some(previous) = set.by_tenant.get(&tenant) {
            problems.push(format!(
                "{}: tenant `{tenant}` already has a policy in {}",
                relative(dir, &path),
                relative(dir, &previous.path)
            ));
            continue;
        }
        match compile(dir, &path) {
            Ok(loaded) => {
                set.by_tenant.insert(tenant, Arc::new(loaded));
            }
            Err(e) => problems.extend(e.problems),
        }
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(LoadError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_reload_swaps_that_tenant_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.yaml"), POLICY).unwrap();
        std::fs::write(dir.path().join("a.yaml"), "version: 1.0.0\ndefault: deny\n").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "version: 1.0.0\ndefault: deny\n").unwrap();
        let policies = Policies::load(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.yaml"), "version: 2.0.0\ndefault: deny\n").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "version: 2.0.0\ndefault: alow\n").unwrap();
        assert_eq!(
            policies.reload_tenant("a").unwrap().as_deref(),
            Some("2.0.0")
        );
        let error = policies.reload_tenant("b").unwrap_err().to_string();
        assert!(error.starts_with("b.yaml:2:"), "{error}");
        let set = policies.current();
        let version = |t: &str| {
            set.for_tenant(t)
                .unwrap()
                .policy
                .version()
                .as_str()
                .to_owned()
        };
        assert_eq!(
            (version("a"), version("b")),
            ("2.0.0".into(), "1.0.0".into())
        );
        // A tenant without a file of its own reloads to the default.
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(policies.reload_tenant("a").unwrap(), None);
        assert_eq!(
            policies
                .current()
                .for_tenant("a")
                .unwrap()
                .policy
                .version()
                .as_str(),
            "1.0.0"
        );
        assert_eq!(policies.reload_tenant("../default").unwrap(), None);
    }

    const POLICY: &str = "version: 1.0.0\ndefault: deny\n";

    #[test]
    fn files_map_to_tenants_and_default_covers_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.yaml"), POLICY).unwrap();
        std::fs::write(
            dir.path().join("acme.yml"),
            "version: 2.0.0\ndefault: allow\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("acme_test.yaml"), "not: a policy").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let policies = Policies::load(dir.path()).unwrap();
        let set = policies.current();
        assert_eq!(
            set.versions().collect::<Vec<_>>(),
            [("acme", "2.0.0"), ("default", "1.0.0")]
        );
        assert_eq!(
            set.for_tenant("zeta").unwrap().policy.version().as_str(),
            "1.0.0"
        );
    }

    #[test]
    fn a_bad_file_refuses_the_reload_and_keeps_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.yaml"), POLICY).unwrap();
        let policies = Policies::load(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("default.yaml"),
            "version: 1.0.1\ndefault: alow\n",
        )
        .unwrap();
        let error = policies.reload().unwrap_err();
        assert!(error.to_string().starts_with("default.yaml:2:"), "{error}");
        assert!(
            !error
                .to_string()
                .contains(&dir.path().display().to_string()),
            "no server path in {error}"
        );
        assert_eq!(
            policies
                .current()
                .for_tenant("x")
                .unwrap()
                .policy
                .version()
                .as_str(),
            "1.0.0"
        );
    }
}
