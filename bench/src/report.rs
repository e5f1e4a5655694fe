//! The results: medians and spreads, the terminal tables with ratios to core-alloc, the CSV
//! (`workload,allocator,threads,metric,value`, one row per median), every run's values, a
//! Markdown summary with the targets, and the plots.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use crate::orchestrate::{Key, Options, Results};
use crate::peers::Peer;
use crate::plot::{self, Chart, Line};
use crate::preload::PROGRAMS;
use crate::talc_workloads::MAX_SIZES;

/// The median and quartiles of one figure's runs.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    /// First and third quartiles (linear interpolation between runs).
    low: f64,
    high: f64,
}

fn summarize(values: &[f64]) -> Summary {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let position = q * (sorted.len() - 1) as f64;
        let below = position.floor() as usize;
        let above = position.ceil() as usize;
        sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
    };
    Summary { median: quantile(0.5), low: quantile(0.25), high: quantile(0.75) }
}

/// How a column shows its figure.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Show {
    /// Nanoseconds as measured.
    Nanos,
    /// Operations per second, shown in millions.
    Mops,
    /// A ratio as measured (resident per live byte).
    PerLive,
    /// Bytes, shown in MiB.
    Mib,
    /// Heap bytes per live byte, shown as talc's score: live / heap in percent.
    Efficiency,
    /// A count as measured.
    Count,
    /// Throughput at `threads` over throughput at one thread (workload 3).
    Scaling,
    /// Seconds as measured.
    Seconds,
    /// The geometric mean over the real programs of the preload family of the allocator's
    /// time over glibc's.
    RealVsGlibc,
}

struct Column {
    title: String,
    workload: String,
    threads: usize,
    metric: &'static str,
    show: Show,
}

impl Column {
    fn new(
        title: impl Into<String>,
        workload: impl Into<String>,
        threads: usize,
        metric: &'static str,
        show: Show,
    ) -> Self {
        Self { title: title.into(), workload: workload.into(), threads, metric, show }
    }

    /// The unit name whose problems explain a missing figure.
    fn unit(&self) -> String {
        let workload = self.workload.as_str();
        if self.metric == "instructions_per_op" {
            "instructions".into()
        } else if workload.starts_with("w3") {
            format!("w3:{}", self.threads)
        } else if workload.starts_with("talc_random") {
            format!("random-actions:{}", self.threads)
        } else if workload.starts_with("talc_heap") {
            "heap-efficiency".into()
        } else if let Some(index) = PROGRAMS.iter().position(|program| program.workload() == workload) {
            format!("preload:{index}")
        } else if workload.starts_with("preload") {
            "preload".into()
        } else {
            workload[..2].to_string()
        }
    }
}

struct Table {
    title: String,
    columns: Vec<Column>,
}

struct Figures<'a> {
    summaries: BTreeMap<&'a Key, Summary>,
    values: &'a BTreeMap<Key, Vec<f64>>,
}

impl Figures<'_> {
    fn runs(&self, workload: &str, peer: Peer, threads: usize, metric: &str) -> Option<&Vec<f64>> {
        let key = Key { workload: workload.into(), peer, threads, metric: metric.into() };
        self.values.get(&key)
    }

    /// Workload 3's scaling at `threads`: the median over runs of each run's throughput at
    /// `threads` over the same run's at one thread (measured seconds apart, so slow drifts of
    /// the machine cancel out), or the ratio of the medians if some run is missing.
    fn scaling(&self, peer: Peer, threads: usize) -> Option<Summary> {
        let workload = "w3_live_set_threads";
        let many = self.runs(workload, peer, threads, "ops_per_s")?;
        let one = self.runs(workload, peer, 1, "ops_per_s")?;
        if many.len() == one.len() {
            let ratios: Vec<f64> = many.iter().zip(one).map(|(many, one)| many / one).collect();
            Some(summarize(&ratios))
        } else {
            let ratio = summarize(many).median / summarize(one).median;
            Some(Summary { median: ratio, low: ratio, high: ratio })
        }
    }

    fn get(&self, workload: &str, peer: Peer, threads: usize, metric: &str) -> Option<Summary> {
        self.summaries
            .iter()
            .find(|(key, _)| {
                key.workload == workload && key.peer == peer && key.threads == threads && key.metric == metric
            })
            .map(|(_, summary)| *summary)
    }

    fn median(&self, workload: &str, peer: Peer, threads: usize, metric: &str) -> Option<f64> {
        self.get(workload, peer, threads, metric).map(|summary| summary.median)
    }

    /// The threads of `workload`'s figures (the preload programs report how many they ran).
    fn threads_of(&self, workload: &str) -> Option<usize> {
        self.summaries.keys().find(|key| key.workload == workload).map(|key| key.threads)
    }

    /// A preload program's median seconds with `peer`.
    fn seconds(&self, workload: &str, peer: Peer) -> Option<f64> {
        self.program_median(workload, peer, "seconds")
    }

    /// A preload program's median `metric` (seconds, peak_rss_bytes) with `peer`.
    fn program_median(&self, workload: &str, peer: Peer, metric: &str) -> Option<f64> {
        self.median(workload, peer, self.threads_of(workload)?, metric)
    }

    /// The real programs of the preload family measured in this run, each with `peer`'s
    /// median `metric` over glibc's, and their geometric mean; `None` if none was measured,
    /// or if one of them lacks `peer`'s or glibc's figure.
    fn real_vs_glibc(&self, peer: Peer, metric: &str) -> Option<(f64, Vec<(&'static str, f64)>)> {
        let mut ratios = Vec::new();
        for program in PROGRAMS.iter().filter(|program| program.is_real()) {
            let workload = program.workload();
            if self.threads_of(&workload).is_none() {
                continue;
            }
            let ratio = self.program_median(&workload, peer, metric)?
                / self.program_median(&workload, Peer::Glibc, metric)?;
            ratios.push((program.name, ratio));
        }
        if ratios.is_empty() {
            return None;
        }
        let mean = (ratios.iter().map(|ratio| ratio.1.ln()).sum::<f64>() / ratios.len() as f64).exp();
        Some((mean, ratios))
    }

    /// The shown value and its spread (half the interquartile range over the median) of
    /// `column` for `peer`.
    fn shown(&self, column: &Column, peer: Peer) -> Option<(f64, Option<f64>)> {
        let summary = if column.show == Show::Scaling {
            self.scaling(peer, column.threads)?
        } else if column.show == Show::RealVsGlibc {
            let (mean, _) = self.real_vs_glibc(peer, column.metric)?;
            Summary { median: mean, low: mean, high: mean }
        } else {
            self.get(&column.workload, peer, column.threads, column.metric)?
        };
        let spread = (summary.median != 0.0 && summary.high > summary.low)
            .then(|| (summary.high - summary.low) / 2.0 / summary.median.abs());
        let value = match column.show {
            Show::Mops => summary.median / 1e6,
            Show::Mib => summary.median / (1u64 << 20) as f64,
            Show::Efficiency => 100.0 / summary.median,
            _ => summary.median,
        };
        Some((value, spread))
    }
}

fn significant(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let whole = format!("{value:.0}");
        let digits = whole.trim_start_matches('-');
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if value < 0.0 { format!("-{grouped}") } else { grouped }
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn tables(peers: &[Peer], threads: &[usize], figures: &Figures<'_>) -> Vec<Table> {
    let mut tables = vec![Table {
        title: "Time per operation, ns (lower is better)".into(),
        columns: vec![
            Column::new("W1 small pair", "w1_small_pairs", 1, "ns_per_op", Show::Nanos),
            Column::new("W2 live set", "w2_live_set", 1, "ns_per_op", Show::Nanos),
            Column::new("W4 remote free", "w4_producer_consumer", 2, "ns_per_op", Show::Nanos),
            Column::new("W5 large", "w5_large", 1, "ns_per_op", Show::Nanos),
            Column::new("W7 Vec push", "w7_realloc_growth", 1, "ns_per_op", Show::Nanos),
        ],
    }];
    let mut scaling = Vec::new();
    for &count in threads {
        let title = format!("W3 {count} thread{} Mops/s", if count == 1 { "" } else { "s" });
        scaling.push(Column::new(title, "w3_live_set_threads", count, "ops_per_s", Show::Mops));
    }
    for &count in threads.iter().filter(|&&count| count > 1) {
        let title = format!("W3 scaling {count}t/1t");
        scaling.push(Column::new(title, "w3_live_set_threads", count, "ops_per_s", Show::Scaling));
    }
    tables.push(Table {
        title: "Workload 3: throughput and scaling (higher is better)".into(),
        columns: scaling,
    });
    tables.push(Table {
        title: "Workload 6: memory (lower is better)".into(),
        columns: vec![
            Column::new("peak resident/live", "w6_peak", 1, "rss_per_live", Show::PerLive),
            Column::new(
                "9/10 freed resident/live",
                "w6_after_free_9_of_10",
                1,
                "rss_per_live",
                Show::PerLive,
            ),
            Column::new("peak MiB", "w6_peak", 1, "resident_bytes", Show::Mib),
            Column::new("9/10 freed, 1 s idle MiB", "w6_after_idle_1s", 1, "resident_bytes", Show::Mib),
            Column::new("then decay call MiB", "w6_after_decay_call", 1, "resident_bytes", Show::Mib),
            Column::new("all freed MiB", "w6_all_freed", 1, "resident_bytes", Show::Mib),
            Column::new("after collect call MiB", "w6_collected", 1, "resident_bytes", Show::Mib),
            Column::new("THP at peak MiB", "w6_peak_huge_pages", 1, "resident_bytes", Show::Mib),
        ],
    });
    tables.push(Table {
        title:
            "Workload 8: a minute of growth and shrink, 16 B-1 MiB, then idle (lower is better; first run)"
                .into(),
        columns: vec![
            Column::new("mean resident/live", "w8_phases", 1, "rss_per_live_mean", Show::PerLive),
            Column::new("peak resident/peak live", "w8_phases", 1, "rss_per_live_peak", Show::PerLive),
            Column::new(
                "9/10 freed, 1 s idle, resident/live",
                "w8_9_of_10_freed_idle_1s",
                1,
                "rss_per_live",
                Show::PerLive,
            ),
            Column::new("10 s idle", "w8_9_of_10_freed_idle_10s", 1, "rss_per_live", Show::PerLive),
            Column::new("all freed, 1 s idle MiB", "w8_all_freed_idle_1s", 1, "resident_bytes", Show::Mib),
        ],
    });
    for &count in threads {
        let columns = MAX_SIZES
            .iter()
            .map(|max| {
                let workload = format!("talc_random_actions_max{max}");
                Column::new(format!("max {max} B"), workload, count, "ops_per_s", Show::Mops)
            })
            .collect();
        let title = format!(
            "talc's random actions, {count} thread{}, Mops/s (higher is better)",
            if count == 1 { "" } else { "s" }
        );
        tables.push(Table { title, columns });
    }
    tables.push(Table {
        title: "talc's heap efficiency (higher is better) and fast-path instructions (lower is better)"
            .into(),
        columns: vec![
            Column::new("heap efficiency %", "talc_heap_efficiency", 1, "rss_per_live", Show::Efficiency),
            Column::new("callgrind instr/W1 pair", "w1_small_pairs", 1, "instructions_per_op", Show::Count),
        ],
    });
    tables.push(program_table(
        figures,
        "Preloaded into programs (LD_PRELOAD): seconds (lower is better)",
        "seconds",
        Show::Seconds,
    ));
    tables.push(program_table(
        figures,
        "Preloaded into programs (LD_PRELOAD): peak resident MiB (lower is better)",
        "peak_rss_bytes",
        Show::Mib,
    ));
    let _ = peers;
    tables
}

/// The preload family's table of `metric`: a column per program and the geometric mean
/// over the real programs against glibc's.
fn program_table(figures: &Figures<'_>, title: &str, metric: &'static str, show: Show) -> Table {
    let mut columns: Vec<Column> = PROGRAMS
        .iter()
        .map(|program| {
            let workload = program.workload();
            let threads = figures.threads_of(&workload).unwrap_or(1);
            Column::new(program.name, workload, threads, metric, show)
        })
        .collect();
    columns.push(Column::new(
        "real programs geomean vs glibc",
        "preload_real_programs",
        1,
        metric,
        Show::RealVsGlibc,
    ));
    Table { title: title.into(), columns }
}

/// The cells of `table`: one row per allocator.
fn cells(
    table: &Table,
    figures: &Figures<'_>,
    results: &Results,
    peers: &[Peer],
) -> Vec<(Peer, Vec<String>)> {
    peers
        .iter()
        .map(|&peer| {
            let row = table
                .columns
                .iter()
                .map(|column| {
                    let ours = figures.shown(column, Peer::CoreAlloc).map(|shown| shown.0);
                    match figures.shown(column, peer) {
                        Some((value, spread)) => {
                            let mut text = significant(value);
                            if let Some(spread) = spread.filter(|spread| *spread >= 0.005) {
                                let _ = write!(text, " ±{:.0}%", spread * 100.0);
                            }
                            if let Some(ours) = ours.filter(|ours| *ours != 0.0) {
                                let _ = write!(text, " ({:.2}x)", value / ours);
                            }
                            text
                        }
                        None => {
                            let unit = column.unit();
                            results
                                .problems
                                .iter()
                                .find(|(problem_peer, problem_unit, _)| {
                                    *problem_peer == peer && *problem_unit == unit
                                })
                                .map_or("–".into(), |(_, _, what)| {
                                    if what.starts_with("timed out") {
                                        "timeout".into()
                                    } else {
                                        "failed".into()
                                    }
                                })
                        }
                    }
                })
                .collect();
            (peer, row)
        })
        .filter(|(_, row): &(Peer, Vec<String>)| row.iter().any(|cell| cell != "–"))
        .collect()
}

fn text_table(table: &Table, rows: &[(Peer, Vec<String>)]) -> String {
    let mut widths: Vec<usize> = table.columns.iter().map(|column| column.title.chars().count()).collect();
    for (_, row) in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = format!("\n{}\n{:<24}", table.title, "allocator");
    for (column, width) in table.columns.iter().zip(&widths) {
        let _ = write!(text, "  {:>width$}", column.title);
    }
    text.push('\n');
    for (peer, row) in rows {
        let _ = write!(text, "{:<24}", peer.name());
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(text, "  {cell:>width$}");
        }
        text.push('\n');
    }
    text
}

fn markdown_table(table: &Table, rows: &[(Peer, Vec<String>)]) -> String {
    let mut text = format!("\n**{}**\n\n| allocator |", table.title);
    for column in &table.columns {
        let _ = write!(text, " {} |", column.title);
    }
    text.push_str("\n|---|");
    for _ in &table.columns {
        text.push_str("---:|");
    }
    text.push('\n');
    for (peer, row) in rows {
        let _ = write!(text, "| {} |", peer.name());
        for cell in row {
            let _ = write!(text, " {cell} |");
        }
        text.push('\n');
    }
    text
}

/// One line per target of the issue: the figure, the bar, and met or short by how much.
fn targets(figures: &Figures<'_>, threads: &[usize]) -> Vec<String> {
    let mut lines = Vec::new();
    let core = Peer::CoreAlloc;
    let ns =
        |workload: &str, peer: Peer, threads: usize| figures.median(workload, peer, threads, "ns_per_op");
    let verdict =
        |met: bool, shortfall: String| if met { "met".to_string() } else { format!("SHORT: {shortfall}") };

    if let Some(ours) = ns("w1_small_pairs", core, 1) {
        let best = [Peer::Mimalloc, Peer::Jemalloc, Peer::Snmalloc]
            .into_iter()
            .filter_map(|peer| ns("w1_small_pairs", peer, 1).map(|value| (value, peer)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((best, peer)) = best {
            lines.push(format!(
                "W1 small pairs as fast as the best of mimalloc/jemalloc/snmalloc: {ours:.1} ns vs {best:.1} ns ({}): {}",
                peer.name(),
                verdict(ours <= best, format!("{:.0}% slower", (ours / best - 1.0) * 100.0))
            ));
        }
        if let Some(glibc) = ns("w1_small_pairs", Peer::Glibc, 1) {
            let speedup = glibc / ours;
            lines.push(format!(
                "W1 small pairs at least 3x glibc: {speedup:.2}x ({ours:.1} vs {glibc:.1} ns): {}",
                verdict(speedup >= 3.0, format!("{speedup:.2}x of the 3x"))
            ));
        }
    }
    for (workload, name, threads) in
        [("w2_live_set", "W2 random live set", 1), ("w4_producer_consumer", "W4 producer/consumer", 2)]
    {
        if let (Some(ours), Some(theirs)) =
            (ns(workload, core, threads), ns(workload, Peer::Mimalloc, threads))
        {
            lines.push(format!(
                "{name} at or ahead of mimalloc: {ours:.1} ns vs {theirs:.1} ns: {}",
                verdict(ours <= theirs, format!("{:.0}% slower", (ours / theirs - 1.0) * 100.0))
            ));
        }
    }
    for &count in threads.iter().filter(|&&count| count == 2) {
        if let Some(scaling) = figures.scaling(core, count) {
            lines.push(format!(
                "W3 {count} threads at least 1.9x one thread: {:.2}x (runs' quartiles {:.2}-{:.2}): {}",
                scaling.median,
                scaling.low,
                scaling.high,
                verdict(scaling.median >= 1.9, format!("{:.2}x of the 1.9x", scaling.median))
            ));
        }
    }
    for &count in threads {
        let mut ratios = Vec::new();
        for max in MAX_SIZES {
            let workload = format!("talc_random_actions_max{max}");
            let ops = |peer| figures.median(&workload, peer, count, "ops_per_s");
            if let (Some(ours), Some(talc)) = (ops(core), ops(Peer::Talc)) {
                ratios.push((max, ours / talc));
            }
        }
        if !ratios.is_empty() {
            let worst = ratios.iter().map(|ratio| ratio.1).fold(f64::INFINITY, f64::min);
            let listed: Vec<String> =
                ratios.iter().map(|(max, ratio)| format!("max {max}: {ratio:.2}x")).collect();
            lines.push(format!(
                "talc random actions ({count} thread{}) at least 2x talc: {}: {}",
                if count == 1 { "" } else { "s" },
                listed.join(", "),
                verdict(worst >= 2.0, format!("lowest {worst:.2}x of the 2x"))
            ));
        }
    }
    let efficiency =
        |peer| figures.median("talc_heap_efficiency", peer, 1, "rss_per_live").map(|v| 100.0 / v);
    if let (Some(ours), Some(talc)) = (efficiency(core), efficiency(Peer::Talc)) {
        lines.push(format!(
            "talc heap efficiency within 5 points of talc: {ours:.1}% vs {talc:.1}%: {}",
            verdict(ours >= talc - 5.0, format!("{:.1} points below talc", talc - ours))
        ));
    }
    let per_live = |workload: &str, peer| figures.median(workload, peer, 1, "rss_per_live");
    if let Some(ours) = per_live("w6_peak", core) {
        let best = Peer::ALL
            .into_iter()
            .filter(|&peer| peer != core)
            .filter_map(|peer| per_live("w6_peak", peer).map(|value| (value, peer)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        lines.push(format!(
            "W6 resident/live after the random-replacement churn at most 1.10: {ours:.3}: {}",
            verdict(ours <= 1.10, format!("{ours:.3} > 1.10"))
        ));
        if let Some((best, peer)) = best {
            lines.push(format!(
                "W6 resident/live no worse than the best peer: {ours:.3} vs {best:.3} ({}): {}",
                peer.name(),
                verdict(ours <= best, format!("{:.1}% more", (ours / best - 1.0) * 100.0))
            ));
        }
    }
    let per_live_metric = |workload: &str, metric: &str| figures.median(workload, core, 1, metric);
    if let Some(ratio) = per_live_metric("w8_9_of_10_freed_idle_1s", "rss_per_live") {
        lines.push(format!(
            "after freeing 9 of 10 blocks and 1 s idle, resident/live at most 3 (workload 8): {ratio:.2}: {}",
            verdict(ratio <= 3.0, format!("{ratio:.2} > 3"))
        ));
    }
    if let Some(bytes) = per_live_metric("w8_all_freed_idle_1s", "resident_bytes") {
        let mib = bytes / (1u64 << 20) as f64;
        lines.push(format!(
            "after everything is freed and 1 s idle, under 4 MiB resident without any call (workload 8): {mib:.1} MiB: {}",
            verdict(mib < 4.0, format!("{mib:.1} MiB"))
        ));
    }
    let mut server = Vec::new();
    let mut slower = Vec::new();
    for name in ["larson", "xmalloc"] {
        let workload = format!("preload_{name}");
        if let (Some(ours), Some(theirs)) =
            (figures.seconds(&workload, core), figures.seconds(&workload, Peer::Mimalloc))
        {
            server.push(format!("{name} {ours:.2} s vs {theirs:.2} s"));
            if ours > theirs {
                slower.push(format!("{name} {:.0}% slower", (ours / theirs - 1.0) * 100.0));
            }
        }
    }
    if !server.is_empty() {
        lines.push(format!(
            "server-like C programs (larson, xmalloc) at least as fast as with mimalloc: {}: {}",
            server.join(", "),
            verdict(slower.is_empty(), slower.join(", "))
        ));
    }
    if let Some((mean, ratios)) = figures.real_vs_glibc(core, "seconds") {
        let listed: Vec<String> = ratios.iter().map(|(name, ratio)| format!("{name} {ratio:.2}x")).collect();
        lines.push(format!(
            "real programs at most 0.8x glibc's time (geometric mean): {mean:.2}x ({}): {}",
            listed.join(", "),
            verdict(mean <= 0.8, format!("{mean:.2}x > 0.8x"))
        ));
    }
    if let Some((mean, ratios)) = figures.real_vs_glibc(core, "peak_rss_bytes") {
        let listed: Vec<String> = ratios.iter().map(|(name, ratio)| format!("{name} {ratio:.2}x")).collect();
        lines.push(format!(
            "real programs' peak resident memory at most 1.2x glibc's (geometric mean): {mean:.2}x ({}): {}",
            listed.join(", "),
            verdict(mean <= 1.2, format!("{mean:.2}x > 1.2x"))
        ));
        // Programs with a few MiB of live data: those that peak under SMALL_PROGRAM with glibc.
        const SMALL_PROGRAM: f64 = 32.0 * (1u64 << 20) as f64;
        let small: Vec<(&str, f64)> = ratios
            .iter()
            .filter(|(name, _)| {
                figures
                    .program_median(&format!("preload_{name}"), Peer::Glibc, "peak_rss_bytes")
                    .is_some_and(|bytes| bytes < SMALL_PROGRAM)
            })
            .copied()
            .collect();
        if !small.is_empty() {
            let listed: Vec<String> =
                small.iter().map(|(name, ratio)| format!("{name} {ratio:.2}x")).collect();
            let over: Vec<String> =
                small.iter().filter(|(_, ratio)| *ratio > 1.5).map(|(name, _)| (*name).to_string()).collect();
            lines.push(format!(
                "programs with a small heap (under 32 MiB with glibc) at most 1.5x glibc's peak resident memory: {}: {}",
                listed.join(", "),
                verdict(over.is_empty(), format!("{} over 1.5x", over.join(", ")))
            ));
        }
    }
    lines
}

/// The machine and the code measured, for the record (taken when the run starts).
pub fn machine(compute_scaling: Option<f64>) -> Vec<String> {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("?".into(), |kib| format!("{:.0} GiB", kib as f64 / (1u64 << 20) as f64));
    let first_line = |program: &str, arguments: &[&str]| {
        Command::new(program)
            .args(arguments)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    vec![
        format!("CPU: {model}, {cpus} CPUs, {memory} RAM"),
        format!(
            "Linux {}, transparent huge pages: {}",
            read("/proc/sys/kernel/osrelease").trim(),
            read("/sys/kernel/mm/transparent_hugepage/enabled").trim()
        ),
        format!("{}; {}", first_line("ldd", &["--version"]), first_line("rustc", &["--version"])),
        {
            let paths = ["--", "../core-alloc", "../page-provider", "../platform"];
            let commit =
                first_line("git", &[&["log", "-1", "--format=%h %cd", "--date=short"][..], &paths].concat());
            let dirty = !first_line(
                "git",
                &["status", "--porcelain", "--", "../core-alloc", "../page-provider", "../platform"],
            )
            .is_empty();
            format!("core-alloc at commit {commit}{}", if dirty { " with uncommitted changes" } else { "" })
        },
        compute_scaling.map_or_else(String::new, |scaling| {
            format!(
                "pure compute on 2 threads runs {scaling:.2}x one thread here (the ceiling for workload 3)"
            )
        }),
    ]
    .into_iter()
    .filter(|line| !line.is_empty())
    .collect()
}

/// The command line of this run, as a user types it.
pub fn command_line() -> String {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release --manifest-path bench/Cargo.toml".to_string();
    if !arguments.is_empty() {
        command.push_str(" -- ");
        command.push_str(&arguments.join(" "));
    }
    command
}

fn color(peer: Peer) -> &'static str {
    plot::PALETTE[Peer::ALL.iter().position(|&p| p == peer).unwrap_or(0) % plot::PALETTE.len()]
}

/// The plots: throughput against threads per workload, and resident memory through
/// workload 6. Returns (file name, caption).
fn plots(
    figures: &Figures<'_>,
    results: &Results,
    peers: &[Peer],
    threads: &[usize],
    out: &Path,
) -> io::Result<Vec<(String, String)>> {
    let mut written = Vec::new();
    let x_ticks: Vec<(f64, String)> =
        threads.iter().map(|&count| (count as f64, count.to_string())).collect();
    let mut workloads =
        vec![("w3_live_set_threads".to_string(), "Workload 3: random live set on every thread".to_string())];
    for max in MAX_SIZES {
        workloads
            .push((format!("talc_random_actions_max{max}"), format!("talc's random actions, max {max} B")));
    }
    for (workload, title) in workloads {
        let lines: Vec<Line> = peers
            .iter()
            .map(|&peer| Line {
                name: peer.name().into(),
                color: color(peer),
                bold: peer == Peer::CoreAlloc,
                points: threads
                    .iter()
                    .filter_map(|&count| {
                        figures
                            .median(&workload, peer, count, "ops_per_s")
                            .map(|ops| (count as f64, ops / 1e6))
                    })
                    .collect(),
            })
            .filter(|line| !line.points.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        let chart = Chart {
            title: &title,
            x_label: "threads",
            y_label: "million operations per second (log scale)",
            x_ticks: x_ticks.clone(),
            x_sections: Vec::new(),
            log_y: true,
        };
        let name = format!("throughput_{workload}.svg");
        fs::write(out.join(&name), plot::render(&chart, &lines))?;
        written.push((name, format!("{title}: throughput against threads (medians)")));
    }
    let lines: Vec<Line> = peers
        .iter()
        .filter_map(|&peer| {
            let series = results.series.get(&peer)?;
            Some(Line {
                name: peer.name().into(),
                color: color(peer),
                bold: peer == Peer::CoreAlloc,
                points: series
                    .iter()
                    .map(|&(phase, progress, resident)| {
                        (phase as f64 + progress.min(1.0), resident as f64 / (1u64 << 20) as f64)
                    })
                    .collect(),
            })
        })
        .collect();
    if !lines.is_empty() {
        let sections = ["fill", "replace", "free 9/10", "free rest", "collect"];
        let chart = Chart {
            title: "Workload 6: resident memory through the fragmentation workload",
            x_label: "phase (100k live objects, 8 B..4 KiB; 9 of 10 freed; the rest freed; explicit collect call)",
            y_label: "resident MiB above the start",
            x_ticks: vec![(0.0, String::new()), (5.0, String::new())],
            x_sections: sections
                .iter()
                .enumerate()
                .map(|(index, name)| (index as f64, name.to_string()))
                .collect(),
            log_y: false,
        };
        let name = "fragmentation_resident.svg".to_string();
        fs::write(out.join(&name), plot::render(&chart, &lines))?;
        written.push((name, "Workload 6: resident memory through the workload (first run)".into()));
    }
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let mut lines: Vec<Line> = peers
        .iter()
        .filter_map(|&peer| {
            let samples = results.timelines.get(&peer)?;
            Some(Line {
                name: peer.name().into(),
                color: color(peer),
                bold: peer == Peer::CoreAlloc,
                points: samples.iter().map(|&(seconds, _, resident)| (seconds, mib(resident))).collect(),
            })
        })
        .collect();
    // The live bytes are the same for every allocator (the same seed): drawn once, from the
    // first timeline, in black.
    if let Some(samples) = peers.iter().find_map(|peer| results.timelines.get(peer)) {
        lines.push(Line {
            name: "live (requested)".into(),
            color: "#000000",
            bold: false,
            points: samples.iter().map(|&(seconds, live, _)| (seconds, mib(live))).collect(),
        });
        let end = samples.last().map_or(1.0, |sample| sample.0);
        let chart = Chart {
            title: "Workload 8: resident memory against live bytes over time",
            x_label: "seconds (seven phases of growth and shrink, then 9 of 10 freed and idle, then all freed)",
            y_label: "MiB above the start",
            x_ticks: vec![(0.0, "0".into()), (end, format!("{end:.0}"))],
            x_sections: Vec::new(),
            log_y: false,
        };
        let name = "long_fragmentation_timeline.svg".to_string();
        fs::write(out.join(&name), plot::render(&chart, &lines))?;
        written.push((name, "Workload 8: resident memory and live bytes over time (first run)".into()));
    }
    Ok(written)
}

/// Writes the CSV files, prints the tables and targets, writes the Markdown summary and the
/// plots, and copies them into `bench/results/` with `--publish`.
pub fn write(results: &Results, options: &Options) -> io::Result<()> {
    fs::create_dir_all(&options.out)?;
    let figures = Figures {
        summaries: results.values.iter().map(|(key, values)| (key, summarize(values))).collect(),
        values: &results.values,
    };
    let mut csv = String::from("workload,allocator,threads,metric,value\n");
    let mut runs = String::from("workload,allocator,threads,metric,run,value\n");
    for (key, values) in &results.values {
        let summary = summarize(values);
        let _ = writeln!(
            csv,
            "{},{},{},{},{}",
            key.workload,
            key.peer.name(),
            key.threads,
            key.metric,
            summary.median
        );
        for (run, value) in values.iter().enumerate() {
            let _ = writeln!(
                runs,
                "{},{},{},{},{},{}",
                key.workload,
                key.peer.name(),
                key.threads,
                key.metric,
                run + 1,
                value
            );
        }
    }
    fs::write(options.out.join("results.csv"), &csv)?;
    fs::write(options.out.join("runs.csv"), &runs)?;
    let mut series = String::from("allocator,phase,progress,resident_bytes\n");
    for (peer, samples) in &results.series {
        for (phase, progress, resident) in samples {
            let _ = writeln!(series, "{},{phase},{progress},{resident}", peer.name());
        }
    }
    fs::write(options.out.join("series.csv"), &series)?;
    let mut timeline = String::from("allocator,seconds,live_bytes,resident_bytes\n");
    for (peer, samples) in &results.timelines {
        for (seconds, live, resident) in samples {
            let _ = writeln!(timeline, "{},{seconds},{live},{resident}", peer.name());
        }
    }
    fs::write(options.out.join("timeline.csv"), &timeline)?;
    let mut meta = format!(
        "runs {}\nseconds {}\nquick {}\ncommand {}\n",
        results.runs, results.seconds, results.quick, results.command
    );
    for line in &results.machine {
        let _ = writeln!(meta, "machine {line}");
    }
    for (peer, unit, what) in &results.problems {
        let _ = writeln!(meta, "problem {} {unit} {what}", peer.name());
    }
    for (peer, unit, why) in &results.skipped {
        let _ = writeln!(meta, "skipped {} {unit} {why}", peer.name());
    }
    fs::write(options.out.join("meta.txt"), &meta)?;

    let mut threads: Vec<usize> = results
        .values
        .keys()
        .filter(|key| key.workload.starts_with("w3") || key.workload.starts_with("talc_random"))
        .map(|key| key.threads)
        .collect();
    threads.sort_unstable();
    threads.dedup();
    let peers = &options.peers;
    let machine = &results.machine;
    let command = &results.command;
    let targets = targets(&figures, &threads);
    let mut terminal = String::new();
    let mut markdown = String::from("## Results\n\n");
    if results.quick {
        markdown.push_str("(`--quick`: small workloads and one run, to check that the harness works; not figures to quote.)\n\n");
    }
    let _ = writeln!(markdown, "Command: `{command}` ({:.0} minutes).\n", results.seconds / 60.0);
    for line in machine {
        let _ = writeln!(markdown, "- {line}");
    }
    let _ = writeln!(
        markdown,
        "\nMedians of {} run{}, one process per allocator and workload, the allocators' order rotated \
         from one workload and run to the next. `±` is half the interquartile range of the runs over the median (every run's value is in `runs.csv`); \
         `(1.23x)` is the allocator's figure over core-alloc's (so above 1 is worse than core-alloc \
         for times and memory, better for throughput and efficiency).",
        results.runs,
        if results.runs == 1 { "" } else { "s" }
    );
    for table in tables(peers, &threads, &figures) {
        let rows = cells(&table, &figures, results, peers);
        if rows.is_empty() {
            continue;
        }
        terminal.push_str(&text_table(&table, &rows));
        markdown.push_str(&markdown_table(&table, &rows));
    }
    terminal.push_str("\n(ratios: the allocator's figure over core-alloc's; ± half the interquartile range of the runs over the median)\n");
    if !targets.is_empty() {
        terminal.push_str("\nTargets\n");
        markdown.push_str("\n**Targets** (goals, not assertions)\n\n");
        for line in &targets {
            let _ = writeln!(terminal, "  {line}");
            let _ = writeln!(markdown, "- {line}");
        }
    }
    if !results.problems.is_empty() {
        terminal.push_str("\nDid not finish\n");
        markdown.push_str("\n**Did not finish**\n\n");
        for (peer, unit, what) in &results.problems {
            let _ = writeln!(terminal, "  {unit} on {}: {what}", peer.name());
            let _ = writeln!(markdown, "- {unit} on {}: {what}", peer.name());
        }
    }
    if !results.skipped.is_empty() {
        terminal.push_str("\nSkipped (not installed here; blank cells)\n");
        markdown.push_str("\n**Skipped** (not installed here; blank cells)\n\n");
        for (peer, unit, why) in &results.skipped {
            let _ = writeln!(terminal, "  {unit} on {}: {why}", peer.name());
            let _ = writeln!(markdown, "- {unit} on {}: {why}", peer.name());
        }
    }
    let plots = plots(&figures, results, peers, &threads, &options.out)?;
    markdown.push('\n');
    for (name, caption) in &plots {
        let _ = writeln!(markdown, "![{caption}](results/{name})\n");
    }
    markdown.push_str("**Allocators**\n\n");
    for peer in peers {
        let _ = writeln!(markdown, "- {}: {}", peer.name(), peer.description());
    }
    fs::write(options.out.join("results.md"), &markdown)?;
    print!("{terminal}");
    println!("\n{}", machine.join("\n"));
    println!(
        "\nwrote {} (and runs.csv, results.md, {} plots) in {:.0} s",
        options.out.join("results.csv").display(),
        plots.len(),
        results.seconds
    );
    if options.publish {
        let published = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        fs::create_dir_all(&published)?;
        for name in ["results.csv", "runs.csv", "results.md"]
            .into_iter()
            .map(String::from)
            .chain(plots.into_iter().map(|p| p.0))
        {
            fs::copy(options.out.join(&name), published.join(&name))?;
        }
        println!("copied into {}", published.display());
    }
    Ok(())
}

/// The results an earlier run wrote into `directory` (`runs.csv`, `series.csv`, `meta.txt`).
pub fn load(directory: &Path) -> io::Result<Results> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut results = Results::default();
    for line in fs::read_to_string(directory.join("runs.csv"))?.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [workload, peer, threads, metric, _run, value] = fields.as_slice() else {
            return Err(invalid(format!("runs.csv: {line}")));
        };
        let peer = Peer::from_name(peer).ok_or_else(|| invalid(format!("runs.csv: allocator in {line}")))?;
        let (Ok(threads), Ok(value)) = (threads.parse(), value.parse()) else {
            return Err(invalid(format!("runs.csv: {line}")));
        };
        let key = Key { workload: workload.to_string(), peer, threads, metric: metric.to_string() };
        results.values.entry(key).or_default().push(value);
    }
    let series = fs::read_to_string(directory.join("series.csv")).unwrap_or_default();
    for line in series.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if let [peer, phase, progress, resident] = fields.as_slice()
            && let (Some(peer), Ok(phase), Ok(progress), Ok(resident)) =
                (Peer::from_name(peer), phase.parse(), progress.parse(), resident.parse())
        {
            results.series.entry(peer).or_default().push((phase, progress, resident));
        }
    }
    let timeline = fs::read_to_string(directory.join("timeline.csv")).unwrap_or_default();
    for line in timeline.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if let [peer, seconds, live, resident] = fields.as_slice()
            && let (Some(peer), Ok(seconds), Ok(live), Ok(resident)) =
                (Peer::from_name(peer), seconds.parse(), live.parse(), resident.parse())
        {
            results.timelines.entry(peer).or_default().push((seconds, live, resident));
        }
    }
    for line in fs::read_to_string(directory.join("meta.txt"))?.lines() {
        let (field, rest) = line.split_once(' ').unwrap_or((line, ""));
        match field {
            "runs" => results.runs = rest.parse().unwrap_or(0),
            "seconds" => results.seconds = rest.parse().unwrap_or(0.0),
            "quick" => results.quick = rest == "true",
            "command" => results.command = rest.to_string(),
            "machine" => results.machine.push(rest.to_string()),
            "problem" | "skipped" => {
                let mut parts = rest.splitn(3, ' ');
                if let (Some(peer), Some(unit), Some(what)) = (parts.next(), parts.next(), parts.next())
                    && let Some(peer) = Peer::from_name(peer)
                {
                    let list = if field == "problem" { &mut results.problems } else { &mut results.skipped };
                    list.push((peer, unit.to_string(), what.to_string()));
                }
            }
            _ => {}
        }
    }
    Ok(results)
}
