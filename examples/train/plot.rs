//! PNG plots (plotters' bitmap backend). Text is drawn with a TrueType font loaded at run time
//! (plotters' pure-Rust ab_glyph renderer), so building needs no system font libraries.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Run;

type PlotResult = Result<(), Box<dyn Error>>;

/// Where common systems keep a sans-serif TrueType font (Debian and Ubuntu: fonts-dejavu-core).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Loads the font for the plots: `explicit` (an error if unusable), else the first of the
/// usual system paths. `Ok(None)`: none found, no plots.
pub fn load_font(explicit: Option<&Path>) -> Result<Option<PathBuf>, String> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => FONT_CANDIDATES.iter().map(PathBuf::from).filter(|p| p.is_file()).collect(),
    };
    let Some(path) = candidates.into_iter().next() else { return Ok(None) };
    let bytes = std::fs::read(&path).map_err(|e| format!("font {}: {e}", path.display()))?;
    // plotters keeps registered fonts for the whole process, so the bytes live as long.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("font {}: not a TrueType/OpenType font", path.display()))?;
    Ok(Some(path))
}

const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// `c` blended towards white by `amount` (0: unchanged, 1: white).
fn lighten(c: RGBColor, amount: f64) -> RGBColor {
    let mix = |v: u8| (f64::from(v) + (255.0 - f64::from(v)) * amount).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// One curve of a panel.
#[derive(Clone)]
struct Curve {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
}

impl Curve {
    fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Curve { label: label.into(), points, color, width: 2 }
    }

    fn thin(mut self) -> Self {
        self.width = 1;
        self
    }
}

enum Scale {
    Linear,
    Log,
    /// Linear, without the first `n` points of each curve: test accuracy and loss without their
    /// near-chance start.
    ZoomAfter(usize),
}

/// Where a panel's legend goes: away from where its curves usually run.
#[derive(Clone, Copy)]
enum Legend {
    Top,
    Bottom,
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    scale: Scale,
    legend_at: Legend,
    curves: &[Curve],
) -> PlotResult {
    let all = || curves.iter().flat_map(|c| c.points.iter().copied()).filter(|p| p.1.is_finite());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let legend = curves.len() > 1 || curves.iter().any(|c| !c.label.is_empty());
    let mut chart = ChartBuilder::on(area);
    chart.caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(70);
    match scale {
        Scale::Log => {
            let positive = || all().map(|p| p.1).filter(|&y| y > 0.0);
            let lo = positive().fold(f64::INFINITY, f64::min);
            let hi = positive().fold(0.0, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > 0.0 { (lo * 0.8, hi * 1.25) } else { (1e-3, 1.0) };
            let mut chart = chart.build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())?;
            chart
                .configure_mesh()
                .light_line_style(TRANSPARENT) // fewer lines: easier to read, much smaller PNG
                .x_desc("step")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_desc(y_desc)
                .y_label_formatter(&|y| format!("{y:.0e}"))
                .draw()?;
            draw(&mut chart, curves, legend.then_some(legend_at))
        }
        Scale::Linear | Scale::ZoomAfter(_) => {
            let skip = if let Scale::ZoomAfter(n) = scale { n } else { 0 };
            let shown: Vec<Curve> = curves
                .iter()
                .map(|c| Curve { points: c.points.iter().skip(skip).copied().collect(), label: c.label.clone(), ..*c })
                .collect();
            let ys = || shown.iter().flat_map(|c| c.points.iter().map(|p| p.1)).filter(|y| y.is_finite());
            let lo = ys().fold(f64::INFINITY, f64::min);
            let hi = ys().fold(f64::NEG_INFINITY, f64::max);
            let pad = ((hi - lo) * 0.08).max(hi.abs() * 1e-3).max(1e-12);
            let (lo, hi) = match (lo.is_finite(), skip) {
                (false, _) => (0.0, 1.0),
                // From zero, so that the size of a change reads right (learning rate, norm).
                (true, 0) => (if lo >= 0.0 { 0.0 } else { lo - pad }, hi + pad),
                (true, _) => (lo - pad, hi + pad),
            };
            let mut chart = chart.build_cartesian_2d(0.0..x_max, lo..hi)?;
            chart
                .configure_mesh()
                .light_line_style(TRANSPARENT)
                .x_desc("step")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_desc(y_desc)
                .draw()?;
            draw(&mut chart, &shown, legend.then_some(legend_at))
        }
    }
}

fn draw<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    curves: &[Curve],
    legend: Option<Legend>,
) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for curve in curves {
        let style = ShapeStyle::from(curve.color).stroke_width(curve.width);
        let points: Vec<(f64, f64)> = curve.points.iter().copied().filter(|p| p.1.is_finite()).collect();
        let series = chart.draw_series(LineSeries::new(points, style))?;
        if legend.is_some() && !curve.label.is_empty() {
            let color = curve.color;
            series.label(curve.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
    }
    if let Some(at) = legend {
        chart
            .configure_series_labels()
            .position(match at {
                Legend::Top => SeriesLabelPosition::UpperRight,
                Legend::Bottom => SeriesLabelPosition::LowerRight,
            })
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}

fn steps(values: &[f64]) -> Vec<(f64, f64)> {
    values.iter().enumerate().map(|(i, &v)| ((i + 1) as f64, v)).collect()
}

fn evals(run: &Run, values: &[f64], scale: f64) -> Vec<(f64, f64)> {
    run.evals.step.iter().zip(values).map(|(&s, &v)| (s as f64, v * scale)).collect()
}

/// Mean training loss of each epoch, at the epoch's last step.
fn epoch_means(run: &Run) -> Vec<(f64, f64)> {
    let per_epoch = run.steps_per_epoch;
    if per_epoch == 0 {
        return Vec::new();
    }
    run.steps
        .loss
        .chunks(per_epoch)
        .enumerate()
        .map(|(e, chunk)| (((e + 1) * per_epoch) as f64, chunk.iter().sum::<f64>() / chunk.len() as f64))
        .collect()
}

fn canvas<'a>(path: &'a Path, size: (u32, u32)) -> Result<DrawingArea<BitMapBackend<'a>, Shift>, Box<dyn Error>> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// One run: training loss, test accuracy, learning rate and parameter L2 norm per step. An
/// L-BFGS run shows its full-batch loss per step, and closure evaluations and GPU reads per step
/// instead of the (constant) learning rate.
pub fn training(path: &Path, run: &Run, title: &str) -> PlotResult {
    let root = canvas(path, (1400, 1000))?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    if let Some(lbfgs) = &run.lbfgs {
        // Step k returns the loss before it, at the point after k - 1 steps; the final loss is after the last.
        let mut train: Vec<(f64, f64)> = run.steps.loss.iter().enumerate().map(|(k, &l)| (k as f64, l)).collect();
        train.extend(lbfgs.final_loss.map(|l| (run.steps.loss.len() as f64, l)));
        panel(
            &areas[0],
            "Loss",
            "cross-entropy",
            Scale::Log,
            Legend::Top,
            &[
                Curve::new("train (full batch)", train, color(0)),
                Curve::new("test", evals(run, &run.evals.test_loss, 1.0), color(1)),
            ],
        )?;
        let final_accuracy = run.evals.test_accuracy.last().copied().unwrap_or(f64::NAN) * 100.0;
        panel(
            &areas[1],
            &format!("Test accuracy (final {final_accuracy:.2} %)"),
            "%",
            Scale::ZoomAfter(1),
            Legend::Bottom,
            &[Curve::new("", evals(run, &run.evals.test_accuracy, 100.0), color(2))],
        )?;
        let counts = |values: Vec<f64>| steps(&values);
        panel(
            &areas[2],
            "Per L-BFGS step",
            "count",
            Scale::Linear,
            Legend::Bottom,
            &[
                Curve::new("closure evaluations", counts(lbfgs.evaluations.iter().map(|&e| e as f64).collect()), color(3)),
                Curve::new("GPU reads", counts(lbfgs.reads.iter().map(|&r| r as f64).collect()), color(5)),
            ],
        )?;
        panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, Legend::Bottom, &[Curve::new("", steps(&run.steps.param_norm), color(4))])?;
        root.present()?;
        return Ok(());
    }
    panel(
        &areas[0],
        "Loss",
        "cross-entropy",
        Scale::Log,
        Legend::Top,
        &[
            Curve::new("train (minibatch)", steps(&run.steps.loss), lighten(color(0), 0.6)).thin(),
            Curve::new("train (epoch mean)", epoch_means(run), color(0)),
            Curve::new("test", evals(run, &run.evals.test_loss, 1.0), color(1)),
        ],
    )?;
    let final_accuracy = run.evals.test_accuracy.last().copied().unwrap_or(f64::NAN) * 100.0;
    panel(
        &areas[1],
        &format!("Test accuracy (final {final_accuracy:.2} %)"),
        "%",
        Scale::ZoomAfter(1),
        Legend::Bottom,
        &[Curve::new("", evals(run, &run.evals.test_accuracy, 100.0), color(2))],
    )?;
    panel(&areas[2], "Learning rate", "lr", Scale::Linear, Legend::Top, &[Curve::new("", steps(&run.steps.lr), color(3))])?;
    panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, Legend::Bottom, &[Curve::new("", steps(&run.steps.param_norm), color(4))])?;
    root.present()?;
    Ok(())
}

/// Several rules on the same model: loss, test accuracy, test loss and parameter norm.
pub fn comparison(path: &Path, runs: &[Run], title: &str) -> PlotResult {
    let root = canvas(path, (1400, 1000))?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    let each = |f: &dyn Fn(&Run) -> Vec<(f64, f64)>| -> Vec<Curve> {
        runs.iter().enumerate().map(|(i, r)| Curve::new(r.label.clone(), f(r), color(i))).collect()
    };
    panel(&areas[0], "Training loss (epoch mean)", "cross-entropy", Scale::Log, Legend::Top, &each(&epoch_means))?;
    // Accuracy and test loss from the fifth epoch on, where the rules differ by a point or less.
    let accuracy = each(&|r| evals(r, &r.evals.test_accuracy, 100.0));
    panel(&areas[1], "Test accuracy (from epoch 5)", "%", Scale::ZoomAfter(5), Legend::Bottom, &accuracy)?;
    let test_loss = each(&|r| evals(r, &r.evals.test_loss, 1.0));
    panel(&areas[2], "Test loss (from epoch 5)", "cross-entropy", Scale::ZoomAfter(5), Legend::Top, &test_loss)?;
    panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, Legend::Bottom, &each(&|r| steps(&r.steps.param_norm)))?;
    root.present()?;
    Ok(())
}

/// A short name for a run in a legend: "wgpu-optim", or "torch float32" from train_torch.py's
/// "torch 2.15.0 (float32, CPU)".
fn short_name(run: &Run) -> String {
    match run.trainer.strip_prefix("torch ") {
        Some(rest) => {
            let dtype = rest.split_once('(').and_then(|(_, d)| d.split([',', ')']).next()).unwrap_or(rest);
            format!("torch {dtype}")
        }
        None => "wgpu-optim".to_string(),
    }
}

/// This library's run against reference runs of the same model (PyTorch): both loss curves
/// (ours drawn last, on top), their difference per step, test accuracy and parameter norm.
pub fn reference(path: &Path, ours: &Run, references: &[Run], title: &str) -> PlotResult {
    let root = canvas(path, (1400, 1000))?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    let all: Vec<&Run> = references.iter().chain(std::iter::once(ours)).collect();
    // References in the colours of their difference curves; ours in the first colour.
    let colour = |i: usize| if i < references.len() { color(i + 1) } else { color(0) };
    let each = |f: &dyn Fn(&Run) -> Vec<(f64, f64)>| -> Vec<Curve> {
        all.iter().enumerate().map(|(i, r)| Curve::new(short_name(r), f(r), colour(i)).thin()).collect()
    };
    panel(&areas[0], "Training loss per step", "cross-entropy", Scale::Log, Legend::Top, &each(&|r| steps(&r.steps.loss)))?;
    let differences: Vec<Curve> = references
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let points = ours.steps.loss.iter().zip(&r.steps.loss).enumerate();
            let points = points.map(|(s, (a, b))| ((s + 1) as f64, (a - b).abs())).collect();
            Curve::new(format!("wgpu-optim vs {}", short_name(r)), points, color(i + 1)).thin()
        })
        .collect();
    panel(&areas[1], "|loss difference| per step", "absolute", Scale::Log, Legend::Bottom, &differences)?;
    let accuracy = each(&|r| evals(r, &r.evals.test_accuracy, 100.0));
    panel(&areas[2], "Test accuracy", "%", Scale::ZoomAfter(1), Legend::Bottom, &accuracy)?;
    if all.iter().all(|r| r.lbfgs.is_some()) {
        // L-BFGS: where the runs' line searches part ways.
        let evaluations = |r: &Run| r.lbfgs.as_ref().map_or(Vec::new(), |l| l.evaluations.iter().map(|&e| e as f64).collect());
        panel(&areas[3], "Closure evaluations per step", "count", Scale::Linear, Legend::Bottom, &each(&|r| steps(&evaluations(r))))?;
    } else {
        panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, Legend::Bottom, &each(&|r| steps(&r.steps.param_norm)))?;
    }
    root.present()?;
    Ok(())
}
