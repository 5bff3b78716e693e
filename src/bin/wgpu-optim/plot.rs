//! The PNG of `wgpu-optim trajectories --png`: a contour map of the function with every run's
//! paths over it, drawn with plotters into an RGB buffer and encoded by image.

use std::error::Error;

use image::ImageEncoder;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use wgpu_optim::trajectories::TrajectoryReport;

/// Colours of the runs, in order (web/www/app.js uses the same).
const RUN_COLOURS: [RGBColor; 8] = [
    RGBColor(230, 25, 75),
    RGBColor(60, 180, 75),
    RGBColor(255, 225, 25),
    RGBColor(0, 130, 200),
    RGBColor(245, 130, 48),
    RGBColor(145, 30, 180),
    RGBColor(70, 240, 240),
    RGBColor(240, 50, 230),
];

/// The map's ramp: dark blue → teal → yellow, viridis-like (the page's map uses the same stops).
const RAMP: [RGBColor; 5] =
    [RGBColor(68, 1, 84), RGBColor(59, 82, 139), RGBColor(33, 145, 140), RGBColor(94, 201, 98), RGBColor(253, 231, 37)];

/// Colour bands of the map; a pixel whose right or lower neighbour lies in another band is
/// darkened, which draws the contour lines.
const BANDS: f64 = 24.0;

/// The plot as PNG bytes, `size` × `size` pixels (clamped to 64..=4096).
pub fn png(report: &TrajectoryReport, size: u32) -> Result<Vec<u8>, Box<dyn Error>> {
    let size = size.clamp(64, 4096);
    let mut rgb = vec![0u8; (size * size * 3) as usize];
    draw(report, size, &mut rgb)?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(&rgb, size, size, image::ColorType::Rgb8)?;
    Ok(png)
}

fn draw(report: &TrajectoryReport, size: u32, rgb: &mut [u8]) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::with_buffer(rgb, (size, size)).into_drawing_area();
    let (function, domain, n) = (report.function, report.function.domain(), size as usize);

    // The map: the function's display level at each pixel centre (top row first), in bands.
    let centre = |i: usize, [lo, hi]: [f64; 2]| lo + (hi - lo) * (i as f64 + 0.5) / n as f64;
    let levels: Vec<f64> = (0..n * n)
        .map(|i| function.display_level(function.value(centre(i % n, domain.x), centre(n - 1 - i / n, domain.y))))
        .collect();
    let (lo, hi) = levels.iter().filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1e-12);
    let t = |i: usize| match (levels[i] - lo) / span {
        t if t.is_nan() => 0.0,
        t => t.clamp(0.0, 1.0),
    };
    let band = |i: usize| (t(i) * BANDS).floor();
    let ramp = DerivedColorMap::new(&RAMP);
    for py in 0..n {
        for px in 0..n {
            let i = py * n + px;
            let RGBColor(r, g, b) = ramp.get_color(t(i));
            let edge = (px + 1 < n && band(i + 1) != band(i)) || (py + 1 < n && band(i + n) != band(i));
            let shade = |c: u8| if edge { (f64::from(c) * 0.6) as u8 } else { c };
            root.draw_pixel((px as i32, py as i32), &RGBColor(shade(r), shade(g), shade(b)))?;
        }
    }

    // The paths, in the function's coordinates (y up), each cut where it leaves far behind.
    let map = root.apply_coord_spec(Cartesian2d::<RangedCoordf64, RangedCoordf64>::new(
        domain.x[0]..domain.x[1],
        domain.y[0]..domain.y[1],
        (0..size as i32, size as i32..0),
    ));
    let near = |v: f64, [lo, hi]: [f64; 2]| v > lo - 4.0 * (hi - lo) && v < hi + 4.0 * (hi - lo); // false for NaN
    let mut starts = Vec::new();
    for (run, colour) in report.runs.iter().zip(RUN_COLOURS.iter().cycle()) {
        for path in &run.paths {
            let points: Vec<(f64, f64)> = path
                .iter()
                .map(|p| (f64::from(p[0]), f64::from(p[1])))
                .take_while(|&(x, y)| near(x, domain.x) && near(y, domain.y))
                .collect();
            let (Some(&start), Some(&end)) = (points.first(), points.last()) else { continue };
            // A black outline under the colour, so that every colour shows on the map; a dot at the end.
            for (style, width, radius) in [(BLACK, 5, 5), (*colour, 3, 4)] {
                map.draw(&PathElement::new(points.clone(), style.stroke_width(width)))?;
                map.draw(&Circle::new(end, radius, style.filled()))?;
            }
            starts.push(start);
        }
    }
    for start in starts {
        map.draw(&Circle::new(start, 3, WHITE.filled()))?;
    }
    root.present()?;
    Ok(())
}
