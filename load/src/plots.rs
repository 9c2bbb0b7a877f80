//! SVG plots for the HTML report (plotters' SVG backend: text is emitted as SVG `<text>`, so no
//! system fonts are needed to render).

use crate::stats::SeriesPoint;
use anyhow::anyhow;
use plotters::prelude::*;

/// A line of the over-time plot: its legend, colour, and the value it draws.
type Line = (&'static str, RGBColor, fn(&SeriesPoint) -> f64);

/// Plot size in pixels.
const SIZE: (u32, u32) = (640, 300);

/// Latency distribution as bars over log-spaced buckets: `bars` are (upper edge ms, count).
pub fn histogram_svg(title: &str, bars: &[(f64, u64)]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot {title}: {e}"))?;
        let max_count = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1);
        let lo = bars.first().map(|b| b.0 / 1.2).unwrap_or(0.001).max(0.001);
        let hi = bars.last().map(|b| b.0 * 1.2).unwrap_or(1.0).max(lo * 10.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), 0u64..max_count + max_count / 10 + 1)
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("count")
            .x_label_formatter(&|v| format_ms(*v))
            .draw()
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        let mut prev = lo;
        let rects: Vec<_> = bars
            .iter()
            .map(|&(edge, count)| {
                let r = Rectangle::new([(prev, 0), (edge, count)], BLUE.mix(0.6).filled());
                prev = edge;
                r
            })
            .collect();
        chart.draw_series(rects).map_err(|e| anyhow!("plot {title}: {e}"))?;
        root.present().map_err(|e| anyhow!("plot {title}: {e}"))?;
    }
    Ok(svg)
}

/// Latency over time: per-second p50, p99 and max.
pub fn over_time_svg(title: &str, series: &[SeriesPoint]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot {title}: {e}"))?;
        let t_max = series.iter().map(|p| p.t).max().unwrap_or(1).max(1);
        let y_max = series.iter().map(|p| p.max_ms).fold(0.0, f64::max).max(0.01) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0u32..t_max + 1, 0f64..y_max)
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("latency (ms)")
            .y_label_formatter(&|v| format_ms(*v))
            .draw()
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        let lines: [Line; 3] = [("p50", GREEN, |p| p.p50_ms), ("p99", BLUE, |p| p.p99_ms), ("max", RED, |p| p.max_ms)];
        for (name, color, value) in lines {
            chart
                .draw_series(LineSeries::new(series.iter().map(|p| (p.t, value(p))), color.stroke_width(2)))
                .map_err(|e| anyhow!("plot {title}: {e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        root.present().map_err(|e| anyhow!("plot {title}: {e}"))?;
    }
    Ok(svg)
}

/// `0.25`, `3.2`, `1200`: enough digits to read an axis.
fn format_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_render_to_svg_without_fonts() {
        let h = histogram_svg("h", &[(0.5, 3), (1.0, 10), (2.0, 1)]).unwrap();
        assert!(h.starts_with("<svg") && h.contains("<rect") && h.contains("<text"), "{h}");
        assert!(h.contains("latency (ms, log scale)"), "axis label rendered as text");
        let s = [SeriesPoint { t: 0, count: 1, p50_ms: 1.0, p99_ms: 2.0, max_ms: 3.0 }];
        let t = over_time_svg("t", &s).unwrap();
        assert!(t.contains("<polyline") || t.contains("<path"), "line drawn");
        // Empty inputs still give a valid (empty) chart rather than an error.
        assert!(histogram_svg("e", &[]).unwrap().starts_with("<svg"));
        assert!(over_time_svg("e", &[]).unwrap().starts_with("<svg"));
    }
}
