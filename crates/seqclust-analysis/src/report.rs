//! The run report: PNG plots (plotters, with an embedded Noto Sans so that no system font is
//! needed) and a self-contained `report/index.html` that embeds them.

use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::profile::ClusterProfile;
use crate::tree::Surrogate;

const W: u32 = 720;
const H: u32 = 420;

fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // the bytes are a valid TTF shipped by the notosans crate; a failure leaves text blank
        let _ = register_font("sans-serif", FontStyle::Normal, notosans::REGULAR_TTF);
        let _ = register_font("sans-serif", FontStyle::Bold, notosans::BOLD_TTF);
    });
}

fn plot_err(plot: &str) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Plot {
        plot: plot.into(),
        message,
    }
}

/// Renders into an RGB buffer and encodes PNG.
fn png(
    plot: &str,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<Vec<u8>> {
    font();
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| plot_err(plot)(e.to_string()))?;
        draw(root.clone()).map_err(plot_err(plot))?;
        root.present().map_err(|e| plot_err(plot)(e.to_string()))?;
    }
    let img =
        image::RgbImage::from_raw(W, H, buf).ok_or_else(|| plot_err(plot)("buffer".into()))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| plot_err(plot)(e.to_string()))?;
    Ok(out.into_inner())
}

fn range(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// A line chart of (x, y) series.
pub fn line_chart(
    plot: &str,
    title: &str,
    x: &str,
    y: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<Vec<u8>> {
    png(plot, |root| {
        let all = series.iter().flat_map(|s| s.1.iter().copied());
        let (x0, x1) = range(all.clone().map(|p| p.0));
        let (y0, y1) = range(all.map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A bar chart of cluster sizes.
pub fn sizes_chart(sizes: &[u64]) -> Result<Vec<u8>> {
    png("sizes", |root| {
        let max = sizes.iter().copied().max().unwrap_or(1).max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("Cluster sizes", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..sizes.len() as f64 - 0.5, 0f64..max * 1.05)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("cluster")
            .y_desc("users")
            .disable_x_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(sizes.iter().enumerate().map(|(i, &s)| {
                let x = i as f64;
                Rectangle::new(
                    [(x - 0.4, 0.0), (x + 0.4, s as f64)],
                    Palette99::pick(i).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A scatter of 2-D points coloured by cluster.
pub fn scatter_chart(points: &[(f64, f64, u32)]) -> Result<Vec<u8>> {
    png("projection", |root| {
        let (x0, x1) = range(points.iter().map(|p| p.0));
        let (y0, y1) = range(points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption("Users, first two principal components", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|&(x, y, c)| {
                Circle::new((x, y), 2, Palette99::pick(c as usize).mix(0.7).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// The first two principal components of `vectors` (n × d) — via the d × d covariance's
/// eigenvectors (nalgebra).
pub fn pca2(vectors: &[f32], d: usize) -> Vec<(f64, f64)> {
    let n = vectors.len() / d.max(1);
    if n == 0 || d < 2 {
        return Vec::new();
    }
    let mut mean = vec![0f64; d];
    for row in vectors.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v) / n as f64;
        }
    }
    let mut cov = nalgebra::DMatrix::<f64>::zeros(d, d);
    for row in vectors.chunks(d) {
        let c: Vec<f64> = row
            .iter()
            .zip(&mean)
            .map(|(&v, m)| f64::from(v) - m)
            .collect();
        for i in 0..d {
            for j in i..d {
                cov[(i, j)] += c[i] * c[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[(i, j)] = cov[(j, i)];
        }
    }
    let eig = nalgebra::SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let (a, b) = (
        eig.eigenvectors.column(order[0]),
        eig.eigenvectors.column(order[1]),
    );
    vectors
        .chunks(d)
        .map(|row| {
            let mut p = (0.0, 0.0);
            for i in 0..d {
                let c = f64::from(row[i]) - mean[i];
                p.0 += c * a[i];
                p.1 += c * b[i];
            }
            p
        })
        .collect()
}

/// One point of the k-selection curves.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KPoint {
    /// k.
    pub k: usize,
    /// Mean distance to the nearest centroid.
    pub inertia_per_point: f64,
    /// Mean silhouette.
    pub silhouette: f64,
}

/// What the report shows.
pub struct ReportInput<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Job name.
    pub name: &'a str,
    /// Training loss per logged step.
    pub loss: Vec<(f64, f64)>,
    /// k-means inertia per iteration.
    pub inertia: Vec<(f64, f64)>,
    /// Cluster profiles.
    pub profiles: &'a [ClusterProfile],
    /// The surrogate tree, if fitted.
    pub surrogate: Option<&'a Surrogate>,
    /// Projected users (x, y, cluster).
    pub projection: Vec<(f64, f64, u32)>,
    /// The k-selection curves.
    pub k_curve: &'a [KPoint],
    /// Extra figures (name → value) for the summary table.
    pub summary: Vec<(String, String)>,
}

/// Renders every plot and the page: `(file name, bytes)` for `report/`.
pub fn render(r: &ReportInput<'_>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if !r.loss.is_empty() {
        files.push((
            "loss.png".into(),
            line_chart(
                "loss",
                "Training loss",
                "step",
                "loss",
                &[("loss", r.loss.clone())],
            )?,
        ));
    }
    if !r.inertia.is_empty() {
        files.push((
            "inertia.png".into(),
            line_chart(
                "inertia",
                "k-means inertia per iteration",
                "iteration",
                "mean distance",
                &[("inertia", r.inertia.clone())],
            )?,
        ));
    }
    let sizes: Vec<u64> = r.profiles.iter().map(|p| p.size).collect();
    files.push(("sizes.png".into(), sizes_chart(&sizes)?));
    if !r.projection.is_empty() {
        files.push(("projection.png".into(), scatter_chart(&r.projection)?));
    }
    if r.k_curve.len() > 1 {
        let inertia: Vec<(f64, f64)> = r
            .k_curve
            .iter()
            .map(|p| (p.k as f64, p.inertia_per_point))
            .collect();
        let sil: Vec<(f64, f64)> = r
            .k_curve
            .iter()
            .map(|p| (p.k as f64, p.silhouette))
            .collect();
        files.push((
            "k_inertia.png".into(),
            line_chart(
                "k_inertia",
                "Choosing k: inertia",
                "k",
                "mean distance",
                &[("inertia", inertia)],
            )?,
        ));
        files.push((
            "k_silhouette.png".into(),
            line_chart(
                "k_silhouette",
                "Choosing k: silhouette",
                "k",
                "silhouette",
                &[("silhouette", sil)],
            )?,
        ));
    }
    let html = page(r, &files);
    files.push(("index.html".into(), html.into_bytes()));
    Ok(files)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(r: &ReportInput<'_>, images: &[(String, Vec<u8>)]) -> String {
    use base64::Engine;
    use std::fmt::Write;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>seqclust run {id}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:0.5em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:90%}}\
         img{{max-width:49%;border:1px solid #eee}}h2{{margin-top:1.5em}}</style></head><body>\
         <h1>{name} — run {id}</h1>",
        id = esc(r.run_id),
        name = esc(r.name)
    );
    h.push_str("<table>");
    for (k, v) in &r.summary {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    h.push_str("</table><h2>Plots</h2>");
    for (name, bytes) in images {
        let _ = write!(
            h,
            "<img alt=\"{n}\" title=\"{n}\" src=\"data:image/png;base64,{b}\">",
            n = esc(name),
            b = base64::engine::general_purpose::STANDARD.encode(bytes)
        );
    }
    if let Some(s) = r.surrogate {
        let _ = write!(
            h,
            "<h2>Why users fall in a cluster</h2><p>A decision tree of depth ≤ {} on interpretable features \
             agrees with the encoder's assignment for <b>{:.1}%</b> of {} held-out users ({} leaves). \
             Most important features: {}.</p>",
            s.max_depth,
            100.0 * s.fidelity,
            s.held_out_users,
            s.leaves,
            esc(&s
                .features
                .iter()
                .take(6)
                .map(|(n, v)| format!("{n} ({v:.2})"))
                .collect::<Vec<_>>()
                .join(", "))
        );
    }
    h.push_str("<h2>Clusters</h2>");
    let list = |xs: &[crate::profile::Lifted]| {
        xs.iter()
            .take(6)
            .map(|l| format!("{} (×{:.1}, {:.0}%)", esc(&l.key), l.lift, 100.0 * l.share))
            .collect::<Vec<_>>()
            .join("<br>")
    };
    for p in r.profiles {
        let _ = write!(
            h,
            "<h3>Cluster {c} — {size} users ({share:.1}%)</h3><table>\
             <tr><th>top items (lift, share of users)</th><td>{items}</td></tr>\
             <tr><th>top categories</th><td>{cats}</td></tr>\
             <tr><th>actions (share of events, lift)</th><td>{acts}</td></tr>\
             <tr><th>events / sessions per user (median)</th><td>{ev:.0} / {se:.0}; {sl:.1} events per session</td></tr>\
             <tr><th>peak hour (UTC)</th><td>{peak}</td></tr>\
             <tr><th>motifs</th><td>{motifs}</td></tr>\
             <tr><th>rules (surrogate tree)</th><td>{rules}</td></tr>\
             <tr><th>medoid users</th><td>{med}</td></tr></table>",
            c = p.cluster,
            size = p.size,
            share = 100.0 * p.share,
            items = list(&p.top_items),
            cats = list(&p.top_categories),
            acts = p
                .actions
                .iter()
                .map(|a| format!("{} {:.0}% (×{:.2})", esc(&a.key), 100.0 * a.share, a.lift))
                .collect::<Vec<_>>()
                .join(", "),
            ev = p.events_per_user.median,
            se = p.sessions_per_user.median,
            sl = p.session_length.median,
            peak = p.peak_hour.map_or("–".to_string(), |h| format!("{h}:00")),
            motifs = p
                .motifs
                .iter()
                .take(6)
                .map(|m| format!(
                    "[{}] {} (×{:.1}, {:.0}%)",
                    m.over,
                    esc(&m.lifted.key),
                    m.lifted.lift,
                    100.0 * m.lifted.share
                ))
                .collect::<Vec<_>>()
                .join("<br>"),
            rules = p
                .rules
                .iter()
                .map(|r| format!(
                    "{} — {} users, precision {:.0}%",
                    esc(&r.text),
                    r.users,
                    100.0 * r.precision
                ))
                .collect::<Vec<_>>()
                .join("<br>"),
            med = esc(&p.medoids.join(", ")),
        );
    }
    h.push_str("</body></html>\n");
    h
}
