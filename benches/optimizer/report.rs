//! The markdown tables the benchmark prints.

use crate::gpu::median;
use crate::layouts::format_count;
use crate::structured::{StateRow, StepRow};
use crate::{naive, LayoutRow, Measured, NaiveRow, RuleRow, TuningRow};

fn table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("### {title}\n");
    println!("| {} |", header.join(" | "));
    // The first column (names) left-aligned; numbers right-aligned, text left, by the first row.
    let numeric = |c: usize| {
        rows.first()
            .is_some_and(|row| row[c].starts_with(|ch: char| ch.is_ascii_digit()))
    };
    let align: Vec<&str> = (0..header.len())
        .map(|c| if c > 0 && numeric(c) { "---:" } else { "---" })
        .collect();
    println!("|{}|", align.join("|"));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

fn ms(seconds: f64) -> String {
    let ms = seconds * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

fn us(seconds: f64) -> String {
    format!("{:.1}", seconds * 1e6)
}

fn pct(ratio: f64) -> String {
    format!("{:.0} %", ratio * 100.0)
}

/// Seconds per unit by the table's clock: GPU timestamps where the device has them.
fn best(m: &Measured) -> f64 {
    m.gpu_s.unwrap_or(m.wall_s)
}

fn opt_ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), ms)
}

fn opt_pct(ratio: Option<f64>) -> String {
    ratio.map_or("-".into(), pct)
}

/// Column headers and cells, with the CPU-time columns only on a software adapter.
struct Columns {
    software: bool,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Columns {
    fn new(software: bool, header: &[(&'static str, bool)]) -> Self {
        let header = header
            .iter()
            .filter(|(_, cpu_only)| software || !cpu_only)
            .map(|(h, _)| *h)
            .collect();
        Columns {
            software,
            header,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<(String, bool)>) {
        let software = self.software;
        self.rows.push(
            cells
                .into_iter()
                .filter(|(_, cpu_only)| software || !cpu_only)
                .map(|(c, _)| c)
                .collect(),
        );
    }

    fn print(&self, title: &str) {
        table(title, &self.header, &self.rows);
    }
}

pub(crate) fn print_bandwidth(rows: &[RuleRow], software: bool) {
    let mut copies: Vec<(usize, f64, Vec<f64>)> = Vec::new();
    for row in rows {
        let samples = if row.copy.samples.gpu.is_empty() {
            &row.copy.samples.wall
        } else {
            &row.copy.samples.gpu
        };
        match copies
            .iter_mut()
            .find(|(e, b, _)| *e == row.elements && *b == row.bytes_per_element)
        {
            Some((_, _, pooled)) => pooled.extend(samples),
            None => copies.push((row.elements, row.bytes_per_element, samples.clone())),
        }
    }
    let copy_rows: Vec<Vec<String>> = copies
        .iter()
        .map(|(elements, b, samples)| {
            let bytes = (*elements as f64 * b).round();
            let s = median(samples);
            vec![
                format_count(*elements),
                format!("{b:.3}").trim_end_matches('0').trim_end_matches('.').to_string(),
                format!("{:.0}", bytes / 1e6),
                ms(s),
                format!("{:.1}", bytes / s / 1e9),
            ]
        })
        .collect();
    table(
        "Copy bandwidth: copy_buffer_to_buffer of the step's bytes (read + written), pooled over the rules' runs",
        &["elements", "B/element", "MB moved", "ms", "GB/s"],
        &copy_rows,
    );
    let mut columns = Columns::new(
        software,
        &[
            ("rule", false),
            ("elements", false),
            ("B/element", false),
            ("dispatches", false),
            ("step ms", false),
            ("GB/s", false),
            ("copy GB/s", false),
            ("of copy", false),
            ("of copy (wall)", false),
            ("step CPU ms", true),
            ("of copy (CPU time)", true),
            ("CPU ref ms", false),
            ("CPU ref GB/s", false),
            ("load", true),
        ],
    );
    for r in rows {
        let cpu_ref_gbps = r.cpu.as_ref().map(|c| {
            format!(
                "{:.1}",
                r.elements as f64 * r.bytes_per_element / c.wall_s / 1e9
            )
        });
        columns.row(vec![
            (r.rule.clone(), false),
            (format_count(r.elements), false),
            (format!("{:.3}", r.bytes_per_element).trim_end_matches('0').trim_end_matches('.').to_string(), false),
            (r.dispatches.to_string(), false),
            (ms(best(&r.step)), false),
            (format!("{:.1}", r.ratio.step_gbps), false),
            (format!("{:.1}", r.ratio.copy_gbps), false),
            (pct(r.ratio.value), false),
            (pct(r.ratio.wall), false),
            (opt_ms(r.step.process_cpu_s), true),
            (opt_pct(r.ratio.process_cpu), true),
            (opt_ms(r.cpu.as_ref().map(|c| c.wall_s)), false),
            (cpu_ref_gbps.unwrap_or_else(|| "-".into()), false),
            (r.step.load_average.map_or("-".into(), |l| format!("{l:.1}")), true),
        ]);
    }
    columns.print("Bandwidth ratio per rule (one tensor per arena size; ratio = step GB/s / copy GB/s of the same bytes, measured alongside)");
}

pub(crate) fn print_layouts(title: &str, rows: &[LayoutRow], software: bool) {
    let mut columns = Columns::new(
        software,
        &[
            ("layout", false),
            ("arenas", false),
            ("dispatches", false),
            ("record µs", false),
            ("step_in_pass µs", false),
            ("allocs (record / step_in_pass)", false),
            ("step ms", false),
            ("of copy", false),
            ("of copy (CPU time)", true),
            ("naive dispatches", false),
            ("naive record ms", false),
            ("naive step ms", false),
            ("CPU ref ms", false),
            ("load", true),
        ],
    );
    for r in rows {
        columns.row(vec![
            (r.layout.clone(), false),
            (r.arenas.to_string(), false),
            (r.dispatches.to_string(), false),
            (us(r.record_s), false),
            (us(r.step_in_pass_s), false),
            (
                format!("{} / {}", r.allocations_per_record, r.allocations_in_step_in_pass),
                false,
            ),
            (ms(best(&r.step)), false),
            (pct(r.ratio.value), false),
            (opt_pct(r.ratio.process_cpu), true),
            (r.naive.as_ref().map_or("-".into(), |n| n.dispatches.to_string()), false),
            (opt_ms(r.naive.as_ref().and_then(|n| n.record_s)), false),
            (opt_ms(r.naive.as_ref().map(|n| best(&n.step))), false),
            (opt_ms(r.cpu.as_ref().map(|c| c.wall_s)), false),
            (r.step.load_average.map_or("-".into(), |l| format!("{l:.1}")), true),
        ]);
    }
    columns.print(title);
}

pub(crate) fn print_naive(rows: &[NaiveRow], software: bool) {
    let mut columns = Columns::new(
        software,
        &[
            ("section", false),
            ("layout", false),
            ("dispatches", false),
            ("step ms", false),
            ("time vs fused", false),
            ("of copy (at 28 B/element)", false),
            ("of copy (CPU time)", true),
        ],
    );
    for r in rows {
        columns.row(vec![
            (r.section.to_string(), false),
            (r.layout.clone(), false),
            (r.dispatches.to_string(), false),
            (ms(best(&r.step)), false),
            (format!("{:.2}×", r.slowdown), false),
            (pct(r.ratio_at_fused_bytes.value), false),
            (opt_pct(r.ratio_at_fused_bytes.process_cpu), true),
        ]);
    }
    columns.print(&format!(
        "Composed-op AdamW baseline (one vec4 kernel per op per tensor, {} B/element of traffic with weight decay)",
        naive::TRAFFIC_BYTES_PER_ELEMENT
    ));
}

pub(crate) fn print_tuning(rows: &[TuningRow], sizes: &[usize], software: bool) {
    let sizes: Vec<usize> = sizes.iter().map(|s| s.next_multiple_of(4)).collect();
    let mut kernels: Vec<&str> = Vec::new();
    for row in rows {
        if !kernels.contains(&row.kernel.as_str()) {
            kernels.push(&row.kernel);
        }
    }
    let mut header = vec!["kernel".to_string()];
    for &size in &sizes {
        let n = format_count(size);
        header.extend([format!("{n} ms"), format!("{n} of copy"), format!("{n} vs library")]);
        if software {
            header.extend([format!("{n} CPU ms"), format!("{n} of copy (CPU time)")]);
        }
    }
    let body: Vec<Vec<String>> = kernels
        .iter()
        .map(|kernel| {
            let mut cells = vec![kernel.to_string()];
            for &size in &sizes {
                let row = rows.iter().find(|r| r.kernel == *kernel && r.elements == size);
                cells.extend([
                    row.map_or("-".into(), |r| ms(best(&r.step))),
                    row.map_or("-".into(), |r| pct(r.ratio.value)),
                    row.map_or("-".into(), |r| format!("{:.2}×", r.speedup_vs_library)),
                ]);
                if software {
                    cells.extend([
                        opt_ms(row.and_then(|r| r.step.process_cpu_s)),
                        opt_pct(row.and_then(|r| r.ratio.process_cpu)),
                    ]);
                }
            }
            cells
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(
        "Tuning: AdamW kernel variants (vs library: the time of the library's mapping, measured as the variant \
         \"1 vec4/inv strided, wg 256\", over this kernel's time; > 1 is faster)",
        &header,
        &body,
    );
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn print_structured_steps(rows: &[StepRow], software: bool) {
    let mut columns = Columns::new(
        software,
        &[
            ("rules", false),
            ("model", false),
            ("Muon matrices (parameters)", false),
            ("ns_steps", false),
            ("groups", false),
            ("dispatches", false),
            ("step ms", false),
            ("vs AdamW", false),
            ("Newton–Schulz GMAC", false),
            ("GMAC/s over the step", false),
            ("step CPU ms", true),
            ("load", true),
        ],
    );
    for r in rows {
        let muon = r.ns_steps.is_some();
        columns.row(vec![
            (r.rules.clone(), false),
            (r.layout.clone(), false),
            (
                if muon {
                    format!("{} ({})", r.muon_matrices, thousands(r.muon_parameters))
                } else {
                    "-".into()
                },
                false,
            ),
            (r.ns_steps.map_or("-".into(), |n| n.to_string()), false),
            (r.groups.to_string(), false),
            (r.dispatches.to_string(), false),
            (ms(best(&r.step)), false),
            (format!("{:.2}×", r.vs_adamw), false),
            (if muon { format!("{:.2}", r.ns_macs / 1e9) } else { "-".into() }, false),
            (
                if r.ns_macs > 0.0 {
                    format!("{:.3}", r.ns_macs / best(&r.step) / 1e9)
                } else {
                    "-".into()
                },
                false,
            ),
            (opt_ms(r.step.process_cpu_s), true),
            (r.step.load_average.map_or("-".into(), |l| format!("{l:.1}")), true),
        ]);
    }
    let clock = rows.first().map_or("timestamps", |r| r.clock);
    columns.print(&format!(
        "Structured rules: one step, Muon on the hidden matrices + AdamW for the rest, against AdamW alone \
         (median; vs AdamW by {clock})"
    ));
}

pub(crate) fn print_state(rows: &[StateRow]) {
    let adamw = rows.iter().find(|r| r.rules == "AdamW").map(|r| r.bytes_per_parameter);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.rules.clone(),
                r.layout.clone(),
                thousands(r.parameters),
                r.source.to_string(),
                r.state.keys.join(", "),
                thousands(r.state.tensors),
                format!("{:.1}", r.state.floats as f64 * 4.0 / 1e6),
                format!("{:.3}", r.bytes_per_parameter),
                adamw.map_or("-".into(), |a| {
                    let ratio = r.bytes_per_parameter / a;
                    if ratio >= 0.1 {
                        format!("{ratio:.2}×")
                    } else {
                        format!("{ratio:.4}×")
                    }
                }),
                r.scratch_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1u64 << 20) as f64)),
                r.dispatches.map_or("-".into(), |d| d.to_string()),
            ]
        })
        .collect();
    table(
        "Optimizer state per parameter (sum of state tensor lengths × 4 B / parameters)",
        &[
            "rules",
            "model",
            "parameters",
            "from",
            "state keys",
            "state tensors",
            "state MB",
            "B/parameter",
            "vs AdamW",
            "Newton–Schulz scratch MiB (not state)",
            "dispatches per step",
        ],
        &body,
    );
}
