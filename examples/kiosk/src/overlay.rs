//! The kiosk's screen, drawn in software into a `0RGB` pixel buffer: the live frame with the
//! hand square on the left, a panel on the right with the recognised digit (large), its
//! confidence, fps and drops. The same picture goes to the window and to PNG snapshots.

use std::path::Path;

use edgemm::pipeline::frame::Roi;
use font8x8::legacy::BASIC_LEGACY;

/// Panel width beside the frame, pixels.
pub const PANEL_WIDTH: usize = 320;

const WHITE: u32 = 0xffffff;
const GREY: u32 = 0x9a9a9a;
const DARK: u32 = 0x1c1f24;
const GREEN: u32 = 0x39d353;
const AMBER: u32 = 0xf0b429;
const RED: u32 = 0xe5534b;

/// What the panel shows.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The stable digit, `None` for "no sign".
    pub digit: Option<usize>,
    /// Its smoothed probability.
    pub confidence: f32,
    /// The latest frame's own best class and probability (unsmoothed).
    pub frame_best: Option<(usize, f32)>,
    pub fps: f64,
    pub pushed: u64,
    pub processed: u64,
    pub dropped: u64,
    /// Ground truth of the frame on screen, for replays.
    pub truth: Option<usize>,
    /// Hold `n` of `total` (replays).
    pub hold: Option<(usize, usize)>,
    pub source: String,
}

/// A `width` x `height` picture, one `0x00RRGGBB` word per pixel (minifb's layout).
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u32>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width * height],
        }
    }

    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, colour: u32) {
        for row in y.min(self.height)..(y + h).min(self.height) {
            let line = &mut self.pixels[row * self.width..][..self.width];
            line[x.min(self.width)..(x + w).min(self.width)].fill(colour);
        }
    }

    pub fn outline(&mut self, x: usize, y: usize, w: usize, h: usize, t: usize, colour: u32) {
        self.fill_rect(x, y, w, t, colour);
        self.fill_rect(x, (y + h).saturating_sub(t), w, t, colour);
        self.fill_rect(x, y, t, h, colour);
        self.fill_rect((x + w).saturating_sub(t), y, t, h, colour);
    }

    /// Draws ASCII `text` with its top-left at `(x, y)`, each font pixel `scale` pixels wide.
    pub fn text(&mut self, x: usize, y: usize, scale: usize, colour: u32, text: &str) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = BASIC_LEGACY[(ch as usize).min(127)];
            let gx = x + i * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.fill_rect(gx + col * scale, y + row * scale, scale, scale, colour);
                    }
                }
            }
        }
    }

    /// Copies packed RGB (`fw` x `fh`) to the top-left corner, scaled by nearest neighbour to
    /// `w` x `h`.
    pub fn blit_rgb(&mut self, rgb: &[u8], fw: usize, fh: usize, w: usize, h: usize) {
        if fw == 0 || fh == 0 {
            return;
        }
        for dy in 0..h.min(self.height) {
            let sy = dy * fh / h;
            let line = &mut self.pixels[dy * self.width..][..self.width];
            for (dx, px) in line.iter_mut().enumerate().take(w) {
                let p = &rgb[(sy * fw + dx * fw / w) * 3..][..3];
                *px = u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]);
            }
        }
    }

    /// Writes the picture as a PNG.
    pub fn save_png(&self, path: &Path) -> image::ImageResult<()> {
        let rgb: Vec<u8> = self
            .pixels
            .iter()
            .flat_map(|&p| [(p >> 16) as u8, (p >> 8) as u8, p as u8])
            .collect();
        image::RgbImage::from_raw(self.width as u32, self.height as u32, rgb)
            .expect("buffer matches the canvas size")
            .save(path)
    }
}

/// Draws the whole screen: `rgb` is the frame (`fw` x `fh`) scaled into the left
/// `canvas.width - PANEL_WIDTH` pixels, `roi` (in frame pixels) outlined on it, then the panel.
pub fn draw(canvas: &mut Canvas, rgb: &[u8], fw: usize, fh: usize, roi: Option<Roi>, s: &Status) {
    let view_w = canvas.width - PANEL_WIDTH;
    let view_h = canvas.height;
    canvas.pixels.fill(DARK);
    canvas.blit_rgb(rgb, fw, fh, view_w, view_h);
    if let (Some(r), true) = (roi, fw > 0 && fh > 0) {
        let sx = |v: usize| v * view_w / fw;
        let sy = |v: usize| v * view_h / fh;
        canvas.outline(sx(r.x), sy(r.y), sx(r.width), sy(r.height), 2, AMBER);
    }
    if let Some((best, p)) = s.frame_best {
        canvas.fill_rect(0, view_h - 22, view_w, 22, 0x000000);
        canvas.text(
            6,
            view_h - 19,
            2,
            GREY,
            &format!("FRAME: {best} {:.0}%", p * 100.0),
        );
    }

    let x0 = view_w + 16;
    canvas.text(x0, 14, 2, GREY, "HAND SIGN");
    let (glyph, colour) = match s.digit {
        Some(d) if s.confidence >= 0.8 => (format!("{d}"), GREEN),
        Some(d) => (format!("{d}"), AMBER),
        None => ("-".to_string(), GREY),
    };
    // The digit: one 8x8 glyph at 20x, 160 pixels tall.
    canvas.text(x0 + 70, 44, 20, colour, &glyph);
    let y = 216;
    canvas.text(x0, y, 3, WHITE, &format!("{:>3.0}%", s.confidence * 100.0));
    let bar = ((PANEL_WIDTH - 32) as f32 * s.confidence.clamp(0.0, 1.0)) as usize;
    canvas.fill_rect(x0, y + 32, PANEL_WIDTH - 32, 10, 0x3a3f47);
    canvas.fill_rect(x0, y + 32, bar, 10, colour);
    canvas.text(x0, y + 60, 2, WHITE, &format!("FPS   {:.1}", s.fps));
    canvas.text(x0, y + 84, 2, WHITE, &format!("DROPS {}", s.dropped));
    canvas.text(
        x0,
        y + 108,
        2,
        GREY,
        &format!("IN {} DONE {}", s.pushed, s.processed),
    );
    if let Some(t) = s.truth {
        let ok = s.digit == Some(t);
        canvas.text(
            x0,
            y + 140,
            2,
            if ok { GREEN } else { RED },
            &format!("TRUTH {t}"),
        );
    }
    if let Some((n, total)) = s.hold {
        canvas.text(x0 + 140, y + 140, 2, GREY, &format!("{n}/{total}"));
    }
    let src: String = s.source.chars().take((PANEL_WIDTH - 24) / 8).collect();
    canvas.text(x0, view_h - 14, 1, GREY, &src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_frame_land_where_asked() {
        let mut c = Canvas::new(PANEL_WIDTH + 40, 40);
        let red = [255u8, 0, 0].repeat(4 * 4);
        draw(&mut c, &red, 4, 4, None, &Status::default());
        assert_eq!(c.pixels[0], 0xff0000, "the frame fills the left part");
        assert_eq!(c.pixels[c.width - 1], DARK, "the panel is dark");
        c.pixels.fill(0);
        c.text(0, 0, 1, WHITE, "1");
        let lit = c.pixels.iter().filter(|&&p| p == WHITE).count();
        assert!(lit > 5 && lit < 40, "{lit}");
    }
}
