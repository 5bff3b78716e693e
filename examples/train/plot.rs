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
    /// Linear, from the smallest value after the first `skip` points of each curve (the others
    /// are left out): test accuracy without its near-chance start.
    ZoomAfter(usize),
}

fn panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str, y_desc: &str, scale: Scale, curves: &[Curve]) -> PlotResult {
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
            chart.configure_mesh().x_desc("step").y_desc(y_desc).y_label_formatter(&|y| format!("{y:.0e}")).draw()?;
            draw(&mut chart, curves, legend, |_| true)
        }
        Scale::Linear | Scale::ZoomAfter(_) => {
            let skip = if let Scale::ZoomAfter(n) = scale { n } else { 0 };
            let keep = |c: &Curve| c.points.iter().skip(skip).map(|p| p.1).filter(|y| y.is_finite()).collect::<Vec<_>>();
            let ys: Vec<f64> = curves.iter().flat_map(keep).collect();
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = match (lo.is_finite(), skip) {
                (false, _) => (0.0, 1.0),
                (true, 0) => {
                    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
                    ((lo - pad).min(if lo >= 0.0 { 0.0 } else { lo - pad }), hi + pad)
                }
                (true, _) => (lo - (hi - lo).max(1.0) * 0.1, hi + (hi - lo).max(1.0) * 0.1),
            };
            let mut chart = chart.build_cartesian_2d(0.0..x_max, lo..hi)?;
            chart.configure_mesh().x_desc("step").y_desc(y_desc).draw()?;
            let range = lo..hi;
            draw(&mut chart, curves, legend, move |y| range.contains(&y))
        }
    }
}

fn draw<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    curves: &[Curve],
    legend: bool,
    visible: impl Fn(f64) -> bool,
) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for curve in curves {
        let style = ShapeStyle::from(curve.color).stroke_width(curve.width);
        let points: Vec<(f64, f64)> = curve.points.iter().copied().filter(|p| p.1.is_finite() && visible(p.1)).collect();
        let series = chart.draw_series(LineSeries::new(points, style))?;
        if legend && !curve.label.is_empty() {
            let color = curve.color;
            series.label(curve.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
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
    let per_epoch = run.steps.loss.len() / run.epochs.max(1);
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

/// One run: training loss, test accuracy, learning rate and parameter L2 norm per step.
pub fn training(path: &Path, run: &Run, title: &str) -> PlotResult {
    let root = canvas(path, (1400, 1000))?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    panel(
        &areas[0],
        "Loss",
        "cross-entropy",
        Scale::Log,
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
        &[Curve::new("", evals(run, &run.evals.test_accuracy, 100.0), color(2))],
    )?;
    panel(&areas[2], "Learning rate", "lr", Scale::Linear, &[Curve::new("", steps(&run.steps.lr), color(3))])?;
    panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, &[Curve::new("", steps(&run.steps.param_norm), color(4))])?;
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
    panel(&areas[0], "Training loss (epoch mean)", "cross-entropy", Scale::Log, &each(&epoch_means))?;
    panel(&areas[1], "Test accuracy", "%", Scale::ZoomAfter(2), &each(&|r| evals(r, &r.evals.test_accuracy, 100.0)))?;
    panel(&areas[2], "Test loss", "cross-entropy", Scale::Log, &each(&|r| evals(r, &r.evals.test_loss, 1.0)))?;
    panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, &each(&|r| steps(&r.steps.param_norm)))?;
    root.present()?;
    Ok(())
}

/// This library's run against reference runs of the same model (PyTorch): both loss curves,
/// their difference per step, test accuracy and parameter norm.
pub fn reference(path: &Path, ours: &Run, references: &[Run], title: &str) -> PlotResult {
    let root = canvas(path, (1400, 1000))?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    let all: Vec<&Run> = std::iter::once(ours).chain(references).collect();
    let each = |f: &dyn Fn(&Run) -> Vec<(f64, f64)>| -> Vec<Curve> {
        all.iter().enumerate().map(|(i, r)| Curve::new(r.trainer.clone(), f(r), color(i)).thin()).collect()
    };
    panel(&areas[0], "Training loss per step", "cross-entropy", Scale::Log, &each(&|r| steps(&r.steps.loss)))?;
    let differences: Vec<Curve> = references
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let points = ours.steps.loss.iter().zip(&r.steps.loss).enumerate();
            let points = points.map(|(s, (a, b))| ((s + 1) as f64, (a - b).abs())).collect();
            Curve::new(format!("vs {}", r.trainer), points, color(i + 1)).thin()
        })
        .collect();
    panel(&areas[1], &format!("|loss difference| ({})", ours.trainer), "absolute", Scale::Log, &differences)?;
    panel(&areas[2], "Test accuracy", "%", Scale::ZoomAfter(1), &each(&|r| evals(r, &r.evals.test_accuracy, 100.0)))?;
    panel(&areas[3], "Parameter L2 norm", "‖θ‖₂", Scale::Linear, &each(&|r| steps(&r.steps.param_norm)))?;
    root.present()?;
    Ok(())
}
