//! `clawfs status`: mounted or not, session, store size, versions, oldest moment.

use anyhow::Result;
use serde::Serialize;

use crate::commands::{human, shown, Ctx};
use crate::ids::Seq;
use crate::replicate::push;
use crate::replicate::settings::Remotes;
use crate::when::{ago, rfc3339, show_time};

#[derive(Serialize)]
struct Status {
    dir: String,
    store: String,
    mounted: bool,
    session: Option<String>,
    mounted_since: Option<String>,
    store_bytes: u64,
    /// Bytes free on the store's disk, and how many of them the store keeps for its catalogue
    /// (versioning pauses when it is down to those).
    store_disk_free: Option<u64>,
    store_disk_reserve: Option<u64>,
    moments: u64,
    newest: Option<String>,
    oldest: Option<String>,
    marks: usize,
    open_writers: Vec<crate::fs::overlay::OpenWriter>,
    /// Mounted with kernel passthrough: how many unversioned files are open passed through.
    passthrough: Option<usize>,
    /// Mounted: how requests reach the daemon.
    requests: Option<crate::fs::requests::Described>,
    /// Processes that reach the real files past the mount (what they change is not versioned).
    underneath: Vec<crate::procs::Holder>,
    /// Paths changed but not versioned yet (no room on the store's disk), captured by the next
    /// commit that succeeds.
    uncaptured: usize,
    /// Since when they wait.
    uncaptured_since: Option<String>,
    /// Mounted: paths met this session that are passed through but not versioned because their
    /// names are not UTF-8 (invalid bytes shown as U+FFFD; at most 100).
    not_utf8: Vec<String>,
    last_error: Option<String>,
    remotes: Vec<RemoteStatus>,
}

#[derive(Serialize)]
struct RemoteStatus {
    name: String,
    url: String,
    schedule: String,
    pushed: u64,
    pending_versions: u64,
    pending_bytes: u64,
    last_push: Option<String>,
    last_error: Option<String>,
    locked: Option<String>,
    pushing: bool,
}

fn remotes(ctx: &Ctx) -> Result<Vec<RemoteStatus>> {
    let head = ctx.store.head();
    let live = ctx
        .live
        .and_then(|l| l.replicator.as_ref())
        .map(|r| r.live())
        .unwrap_or_default();
    let mut out = Vec::new();
    for r in Remotes::load(ctx.store.dir())?.remotes {
        let st = push::load_state(&ctx.store, &r.name)?;
        // What epochs after the cursor added to the store: an upper bound of what is to upload.
        let mut pending_bytes = 0;
        // Capped so that status stays instant on a never-pushed long history (a lower bound then).
        let mut s = Seq(st.pushed.0.max(head.0.saturating_sub(100_000))).next();
        while s <= head {
            pending_bytes += ctx.store.epoch(s)?.map(|e| e.stored_bytes).unwrap_or(0);
            s = s.next();
        }
        let l = live.get(&r.name);
        out.push(RemoteStatus {
            url: r.spec.url.clone(),
            schedule: r.schedule.to_string(),
            pushed: st.pushed.0,
            pending_versions: head.0.saturating_sub(st.pushed.0),
            pending_bytes,
            last_push: st.last_push_ns.map(rfc3339),
            last_error: st.last_error.clone(),
            locked: l.and_then(|l| l.locked.clone()),
            pushing: l.is_some_and(|l| l.pushing),
            name: r.name,
        });
    }
    Ok(out)
}

/// Runs `status`.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let head = ctx.store.head();
    let oldest = ctx.store.first_moment()?.map(|(_, e)| e.time_ns);
    let newest = ctx.store.epoch(head).ok().flatten().map(|e| e.time_ns);
    let (last_error, (uncaptured, uncaptured_since)) = match ctx.live {
        Some(l) => l
            .rec
            .call(|r| (r.last_error.clone(), r.uncaptured()))
            .unwrap_or_else(|| {
                let gone = "the recorder has stopped: changes are not versioned until the next \
                            mount (the daemon's log says why)";
                (Some(gone.to_string()), (0, None))
            }),
        None => Default::default(),
    };
    // A file system that keeps no count of its blocks says nothing about room (reserve 0).
    let room = crate::store::room::Room::at(ctx.store.dir())
        .ok()
        .filter(|r| r.reserve > 0);
    let s = Status {
        dir: ctx.dir.display().to_string(),
        store: ctx.store.dir().display().to_string(),
        mounted: ctx.live.is_some(),
        session: ctx.live.map(|l| l.session.to_string()),
        mounted_since: ctx.live.map(|l| rfc3339(l.started_ns)),
        store_bytes: ctx.store.disk_usage()?,
        store_disk_free: room.map(|r| r.free),
        store_disk_reserve: room.map(|r| r.reserve),
        moments: ctx.store.moment_count()?,
        newest: newest.map(rfc3339),
        oldest: oldest.map(rfc3339),
        marks: ctx.store.marks()?.len(),
        open_writers: ctx
            .live
            .map(|l| l.overlay.open_writers())
            .unwrap_or_default(),
        passthrough: ctx.live.and_then(|l| l.overlay.passed_through()),
        requests: ctx.live.map(|l| l.overlay.requests().describe()),
        underneath: ctx
            .live
            .map(|l| l.overlay.underneath(&ctx.dir))
            .unwrap_or_default()
            .into_iter()
            .filter(|u| Some(u.pid) != ctx.client)
            .collect(),
        uncaptured,
        uncaptured_since: uncaptured_since.map(rfc3339),
        not_utf8: ctx.live.map(|l| l.overlay.not_utf8()).unwrap_or_default(),
        last_error,
        remotes: remotes(ctx)?,
    };
    if ctx.json {
        return ctx.emit_json(&s);
    }
    let o = &mut ctx.out;
    writeln!(o, "directory   {}", s.dir)?;
    match (&s.session, ctx.live) {
        (Some(id), Some(l)) => writeln!(
            o,
            "mounted     yes, session {id} since {} ({})",
            show_time(l.started_ns),
            ago(l.started_ns)
        )?,
        _ => writeln!(o, "mounted     no")?,
    }
    write!(o, "store       {} ({})", s.store, human(s.store_bytes))?;
    match room {
        Some(r) if r.check(0).is_err() => writeln!(
            o,
            "; its disk is full: {} free, {} kept for the catalogue",
            human(r.free),
            human(r.reserve)
        )?,
        // Within 10 reserves (up to 640 MiB) of pausing: worth saying before it happens.
        Some(r) if r.check(9 * r.reserve).is_err() => writeln!(
            o,
            "; its disk is nearly full: {} free (versioning pauses at {})",
            human(r.free),
            human(r.reserve)
        )?,
        Some(r) => writeln!(o, "; {} free on its disk", human(r.free))?,
        None => writeln!(o)?,
    }
    writeln!(o, "moments     {}", s.moments)?;
    if let (Some(n), Some(old)) = (newest, oldest) {
        writeln!(o, "newest      #{head} at {} ({})", show_time(n), ago(n))?;
        writeln!(o, "oldest      #1 at {} ({})", show_time(old), ago(old))?;
    }
    writeln!(o, "marks       {}", s.marks)?;
    if let Some(r) = &s.requests {
        writeln!(o, "requests    {}", r.how)?;
    }
    if s.mounted {
        match s.passthrough {
            Some(n) => writeln!(
                o,
                "passthrough on: unversioned files are served by the kernel ({n} open now)"
            )?,
            None => writeln!(
                o,
                "passthrough off (needs root and Linux 6.9+): unversioned files go through the daemon"
            )?,
        }
    }
    for w in &s.open_writers {
        writeln!(
            o,
            "writing     {} (pid {} {})",
            shown(&w.path),
            w.pid,
            shown(&w.command)
        )?;
    }
    for u in &s.underneath {
        writeln!(
            o,
            "underneath  {} (held from before the mount: not versioned)",
            u.describe()
        )?;
    }
    if let Some(since) = uncaptured_since {
        writeln!(
            o,
            "waiting     {} paths changed since {} ({}) are not versioned yet: the first commit that succeeds captures them",
            s.uncaptured,
            show_time(since),
            ago(since)
        )?;
    }
    if let Some(first) = s.not_utf8.first().map(|p| shown(p)) {
        let more = match s.not_utf8.len() {
            1 => String::new(),
            n => format!(" and {} more (`--json` lists them)", n - 1),
        };
        writeln!(
            o,
            "not UTF-8   {first}{more}: passed through but not versioned, as names that are not UTF-8 are"
        )?;
    }
    if let Some(e) = &s.last_error {
        writeln!(o, "last error  {e}")?;
    }
    for r in &s.remotes {
        let last = r.last_push.as_deref().unwrap_or("never");
        writeln!(
            o,
            "remote      {} ({}, {}): pushed #{}, {} versions ({}) pending, last push {last}{}",
            r.name,
            r.url,
            r.schedule,
            r.pushed,
            r.pending_versions,
            human(r.pending_bytes),
            if r.pushing { ", pushing now" } else { "" }
        )?;
        if let Some(l) = &r.locked {
            writeln!(o, "            locked: {l}")?;
        }
        if let Some(e) = &r.last_error {
            writeln!(o, "            last error: {e}")?;
        }
    }
    Ok(())
}
