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
}

impl Policies {
    /// Loads every policy in `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let set = load_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
        })
    }

    /// The set in force now. Cheap: an atomic load.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Recompiles the folder; swaps the new set in only if all of it compiles.
    pub fn reload(&self) -> Result<Arc<PolicySet>, LoadError> {
        let set = Arc::new(load_dir(&self.dir)?);
        self.current.store(Arc::clone(&set));
        Ok(set)
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

fn load_dir(dir: &Path) -> Result<PolicySet, LoadError> {
    let fail = |message: String| LoadError {
        problems: vec![message],
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| fail(format!("{}: cannot read the folder: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| fail(format!("{}: cannot read the folder: {e}", dir.display())))?;
        paths.push(entry.path());
    }
    paths.sort();
    let mut set = PolicySet::default();
    let mut problems = Vec::new();
    for path in paths {
        let Some(tenant) = tenant_of(&path) else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        match Policy::parse(&source) {
            Ok(policy) => {
                if let Some(previous) = set.by_tenant.get(&tenant) {
                    problems.push(format!(
                        "{}: tenant `{tenant}` already has a policy in {}",
                        path.display(),
                        previous.path.display()
                    ));
                    continue;
                }
                set.by_tenant
                    .insert(tenant, Arc::new(LoadedPolicy { policy, path }));
            }
            Err(errors) => {
                problems.extend(errors.iter().map(|e| format!("{}:{e}", path.display())));
            }
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
        assert!(error.to_string().contains("default.yaml:2:"), "{error}");
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
