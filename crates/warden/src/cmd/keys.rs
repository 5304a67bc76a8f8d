//! `warden keys`: create, list and revoke API keys directly in the database, each change
//! recorded in the audit log. The token is printed once and never stored; listings show
//! neither it nor its hash.

use crate::db::{self, DbArgs, Migrate};
use crate::{Outcome, time};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::Write;
use warden_server::ids;
use warden_server::keys::{self, KeySpec, Role};
use warden_store::{Append, KeyRecord, NewEvent, Store, kind};

/// Arguments of `warden keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create an API key and print its token once.
    #[command(after_help = "Examples:\n  \
        KEY=$(warden keys create --role controller --tenant acme --agent 'support-*' | head -1)\n  \
        warden keys create --role approver --user alice --group legal --label 'legal desk'\n  \
        warden keys create --role agent --agent support-bot --json\n  \
        warden keys create --role operator --label 'prometheus and on-call'")]
    Create(CreateArgs),
    /// List API keys; never shows a secret or its hash.
    #[command(after_help = "Example:\n  warden keys list --tenant acme")]
    List(ListArgs),
    /// Revoke an API key at once; exit 1 if there is no such active key.
    #[command(after_help = "Example:\n  warden keys revoke 3fz8k2m9q1xd")]
    Revoke(RevokeArgs),
    /// Add a new permit signing key to the data dir's key file; the old ones keep
    /// verifying until their permits have expired (24 h), unless revoked with
    /// `--revoke-old`. Send SIGHUP to (or restart) every replica afterwards.
    #[command(
        name = "rotate-permit",
        after_help = "Examples:\n  \
        warden keys rotate-permit --data-dir /var/lib/warden\n  \
        warden keys rotate-permit --revoke-old   # a signing key leaked: its permits stop verifying"
    )]
    RotatePermit(RotatePermitArgs),
}

#[derive(Debug, clap::Args)]
struct RotatePermitArgs {
    /// The server's data dir, holding `warden-permit.key`.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = ".")]
    data_dir: std::path::PathBuf,
    /// Revoke the old keys at once instead of keeping them verifiable: their permits
    /// answer `revoked`.
    #[arg(long)]
    revoke_old: bool,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Role of the key: controller, agent, approver, executor (may only verify permits),
    /// admin (of its tenant) or operator (across tenants); repeat the flag or separate
    /// roles with commas.
    #[arg(long = "role", value_name = "ROLE", required = true, value_delimiter = ',',
          value_parser = parse_role)]
    roles: Vec<Role>,
    /// The tenant the key acts in.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// For an agent key, the agent's id; for a controller key, the agent ids (a glob such as
    /// `support-*`) it may name.
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
    /// Approver group; repeat the flag or separate groups with commas.
    #[arg(long = "group", value_name = "GROUP", value_delimiter = ',')]
    groups: Vec<String>,
    /// For an approver key, the person who holds it: quorums count distinct users, and a
    /// user never approves an action on their own behalf.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// A label for humans, e.g. who holds the key.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only this tenant's keys.
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Debug, clap::Args)]
struct RevokeArgs {
    /// The key's public id (the part after `wdn_` in its token).
    id: String,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| {
        format!(
            "unknown role `{name}`: use controller, agent, approver, executor, admin or operator"
        )
    })
}

/// Runs a `warden keys` subcommand against the database.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    if let Command::RotatePermit(rotate) = &args.command {
        return rotate_permit(rotate, json);
    }
    super::block_on(async move {
        let store = db::open(&args.db.url, Migrate::RequireCurrent).await?;
        match args.command {
            Command::Create(create_args) => create(store.as_ref(), create_args, json).await,
            Command::List(list_args) => list(store.as_ref(), &list_args, json).await,
            Command::Revoke(revoke_args) => revoke(store.as_ref(), &revoke_args.id, json).await,
            Command::RotatePermit(rotate) => rotate_permit(&rotate, json),
        }
    })
}

/// Adds a signing key to the key file (no database involved: the keys are the server's
/// files, like the audit key).
fn rotate_permit(args: &RotatePermitArgs, json: bool) -> Result<Outcome> {
    let kid = warden_server::permits::rotate(&args.data_dir, time::now_ms(), args.revoke_old)
        .context("cannot rotate the permit signing key")?;
    if json {
        println!("{}", json!({"kid": kid, "revoked_old": args.revoke_old}));
    } else {
        println!("{kid}");
        eprintln!(
            "new permit signing key {kid}; old keys {}; send SIGHUP to every replica (or restart them)",
            if args.revoke_old {
                "revoked"
            } else {
                "verify for 24h more"
            }
        );
    }
    if std::env::var_os(warden_server::permits::PERMIT_KEY_ENV).is_some() {
        eprintln!(
            "note: {} is set here; a server that has it set ignores the key file",
            warden_server::permits::PERMIT_KEY_ENV
        );
    }
    Ok(Outcome::Ok)
}

async fn create(store: &dyn Store, args: CreateArgs, json: bool) -> Result<Outcome> {
    let spec = key_spec(args)?;
    let (issued, record) = keys::create(store, spec, "cli", time::now_ms()).await?;

    let mut out = std::io::stdout().lock();
    if json {
        let body = json!({
            "token": issued.token,
            "id": record.id,
            "tenant": record.tenant,
            "roles": record.roles,
            "agent": record.agent,
            "groups": record.groups,
            "user": record.user,
            "label": record.label,
            "created_at": time::rfc3339(record.created_at_ms),
        });
        writeln!(out, "{body}")?;
    } else {
        // The token alone on the first line, so `| head -1` captures exactly it.
        writeln!(out, "{}", issued.token)?;
        out.flush()?;
        eprintln!(
            "created key {} in tenant `{}` with roles {}; the token above will not be shown again",
            record.id,
            record.tenant,
            record.roles.join(",")
        );
    }
    Ok(Outcome::Ok)
}

/// Checks the flags against each other and turns them into what a key is for.
fn key_spec(args: CreateArgs) -> Result<KeySpec> {
    if args.tenant.trim().is_empty() {
        bail!("the tenant must not be empty");
    }
    let mut roles = Vec::new();
    for role in args.roles {
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    let mut groups = Vec::new();
    for group in args.groups {
        let group = group.trim().to_owned();
        if group.is_empty() {
            bail!("`--group` must not be empty");
        }
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let spec = KeySpec {
        tenant: args.tenant,
        roles,
        agent: args.agent,
        groups,
        user: args.user,
        label: args.label,
    };
    // The same rules as every other way of creating a key (one agent per agent key, ...).
    keys::validate(&spec).map_err(anyhow::Error::msg)?;
    Ok(spec)
}

async fn record_event(store: &dyn Store, event: NewEvent) -> Result<()> {
    store
        .append(vec![Append {
            event,
            decision: None,
            ..Append::default()
        }])
        .await
        .context("cannot append to the audit log")?;
    Ok(())
}

async fn list(store: &dyn Store, args: &ListArgs, json: bool) -> Result<Outcome> {
    let keys: Vec<KeyRecord> = store
        .keys()
        .await
        .context("cannot list the keys")?
        .into_iter()
        .filter(|k| args.tenant.as_ref().is_none_or(|t| *t == k.tenant))
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<Value> = keys.iter().map(key_json).collect();
        writeln!(out, "{}", Value::Array(list))?;
        return Ok(Outcome::Ok);
    }
    if keys.is_empty() {
        eprintln!("no keys");
        return Ok(Outcome::Ok);
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(",")
        }
    };
    let mut rows = vec![
        [
            "ID", "TENANT", "ROLES", "AGENT", "USER", "GROUPS", "LABEL", "CREATED", "REVOKED",
        ]
        .map(String::from),
    ];
    for k in &keys {
        rows.push([
            k.id.clone(),
            k.tenant.clone(),
            list(&k.roles),
            dash(&k.agent),
            dash(&k.user),
            list(&k.groups),
            dash(&k.label),
            time::rfc3339(k.created_at_ms),
            k.revoked_at_ms
                .map_or_else(|| "-".to_owned(), time::rfc3339),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(Outcome::Ok)
}

/// A key as listings show it: everything but the secret's hash.
fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "roles": k.roles,
        "agent": k.agent,
        "groups": k.groups,
        "user": k.user,
        "label": k.label,
        "created_at": time::rfc3339(k.created_at_ms),
        "revoked_at": k.revoked_at_ms.map(time::rfc3339),
        "active": k.revoked_at_ms.is_none(),
    })
}

async fn revoke(store: &dyn Store, id: &str, json: bool) -> Result<Outcome> {
    let key = store.key(id).await.context("cannot read the key")?;
    let Some(key) = key else {
        eprintln!("error: no active key `{id}`: there is no key with this id");
        return Ok(Outcome::Failed);
    };
    if let Some(at) = key.revoked_at_ms {
        eprintln!(
            "error: no active key `{id}`: it was revoked at {}",
            time::rfc3339(at)
        );
        return Ok(Outcome::Failed);
    }
    let now = time::now_ms();
    if !store
        .revoke_key(id, now)
        .await
        .context("cannot revoke the key")?
    {
        eprintln!("error: no active key `{id}`: it was revoked meanwhile");
        return Ok(Outcome::Failed);
    }
    let event = NewEvent {
        id: ids::ulid(now),
        time_ms: now,
        tenant: key.tenant.clone(),
        kind: kind::KEY_REVOKED.to_owned(),
        detail: json!({"key_id": key.id, "by": "cli"}),
        ..NewEvent::default()
    };
    // The key stays revoked either way: failing to record it must not bring it back.
    record_event(store, event)
        .await
        .with_context(|| format!("key `{id}` was revoked, but the revocation was not audited"))?;
    let mut out = std::io::stdout().lock();
    if json {
        let body = json!({"id": key.id, "tenant": key.tenant, "revoked_at": time::rfc3339(now)});
        writeln!(out, "{body}")?;
    } else {
        writeln!(out, "revoked key {id}")?;
    }
    Ok(Outcome::Ok)
}
