//! Bilinear resampling of 8-bit RGB images, computed the way Pillow's `Image.resize(size,
//! Image.BILINEAR)` computes it, so the service feeds a model the very pixels the usual Python
//! (PIL/torchvision) preprocessing would:
//!
//! - triangle filter of support 1, widened by the scale factor when shrinking (antialiasing);
//! - output pixel `i` centred on input coordinate `(i + 0.5) · in/out`;
//! - weights normalised to sum 1, then held as 22-bit fixed-point integers;
//! - a horizontal pass, then a vertical pass, each rounding to 8 bits.
//!
//! Only the requested window of the resized image is computed: each output pixel depends on its
//! own weights alone, so the window is bit-identical to cropping the full resize.

use image::RgbImage;

/// Fractional bits of the fixed-point weights (leaves room for 8-bit values and rounding in i32).
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A rectangle `width`×`height` at (`left`, `top`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// Weights of one axis: for output position `i` (within the window), input positions
/// `start[i] .. start[i] + taps[i]` with weights `weights[i * max_taps ..]`.
struct AxisWeights {
    start: Vec<usize>,
    taps: Vec<usize>,
    max_taps: usize,
    weights: Vec<i32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

impl AxisWeights {
    fn new(in_size: usize, out_size: usize, first: usize, count: usize) -> AxisWeights {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // triangle support (1) × filter scale
        let max_taps = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(count);
        let mut taps = Vec::with_capacity(count);
        let mut weights = vec![0i32; count * max_taps];
        let mut real = vec![0f64; max_taps];
        for (slot, out) in (first..first + count).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // Truncation toward zero, then clamping, as the reference implementation does.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64).max(lo as i64 + 1) as usize;
            let n = (hi - lo).min(max_taps);
            let mut total = 0.0;
            for (x, w) in real.iter_mut().enumerate().take(n) {
                *w = triangle((x as f64 + lo as f64 - center + 0.5) / filter_scale);
                total += *w;
            }
            for (x, w) in real.iter().enumerate().take(n) {
                let normalised = if total != 0.0 { w / total } else { *w };
                let fixed = normalised * f64::from(1u32 << PRECISION_BITS);
                weights[slot * max_taps + x] = if fixed < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
            }
            start.push(lo);
            taps.push(n);
        }
        AxisWeights { start, taps, max_taps, weights }
    }

    fn of(&self, slot: usize) -> (usize, &[i32]) {
        let offset = slot * self.max_taps;
        (self.start[slot], &self.weights[offset..offset + self.taps[slot]])
    }
}

fn clip8(accumulated: i32) -> u8 {
    (accumulated >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The `window` of `image` resized to `new_width`×`new_height` (bilinear, Pillow's arithmetic).
pub fn resize_window(image: &RgbImage, new_width: u32, new_height: u32, window: Window) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (window.width as usize, window.height as usize);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        return RgbImage::new(window.width, window.height);
    }
    let horizontal = AxisWeights::new(in_w, new_width as usize, window.left as usize, out_w);
    let vertical = AxisWeights::new(in_h, new_height as usize, window.top as usize, out_h);

    // Source rows the vertical pass reads.
    let first_row = vertical.start[0];
    let last_row = (0..out_h).map(|y| vertical.start[y] + vertical.taps[y]).max().unwrap_or(first_row);
    let src = image.as_raw();

    // Horizontal pass over those rows only.
    let mut rows = vec![0u8; (last_row - first_row) * out_w * 3];
    for (row_out, y) in rows.chunks_exact_mut(out_w * 3).zip(first_row..last_row) {
        let row_in = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (x, pixel) in row_out.chunks_exact_mut(3).enumerate() {
            let (lo, weights) = horizontal.of(x);
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (&w, px) in weights.iter().zip(row_in[lo * 3..].chunks_exact(3)) {
                r += i32::from(px[0]) * w;
                g += i32::from(px[1]) * w;
                b += i32::from(px[2]) * w;
            }
            pixel[0] = clip8(r);
            pixel[1] = clip8(g);
            pixel[2] = clip8(b);
        }
    }

    // Vertical pass.
    let stride = out_w * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut accumulator = vec![0i32; stride];
    for (y, row_out) in out.chunks_exact_mut(stride).enumerate() {
        let (lo, weights) = vertical.of(y);
        accumulator.fill(HALF);
        for (tap, &w) in weights.iter().enumerate() {
            let row = lo + tap - first_row;
            let row_in = &rows[row * stride..(row + 1) * stride];
            for (acc, &v) in accumulator.iter_mut().zip(row_in) {
                *acc += i32::from(v) * w;
            }
        }
        for (dst, &acc) in row_out.iter_mut().zip(&accumulator) {
            *dst = clip8(acc);
        }
    }
    RgbImage::from_raw(window.width, window.height, out).expect("buffer sized for the window")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn full(width: u32, height: u32) -> Window {
        Window { left: 0, top: 0, width, height }
    }

    #[test]
    fn same_size_is_the_identity() {
        let image = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 30) as u8, (y * 50) as u8, (x * y) as u8]));
        assert_eq!(resize_window(&image, 7, 5, full(7, 5)), image);
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let image = RgbImage::from_fn(13, 9, |x, y| Rgb([(x * 19) as u8, (y * 27) as u8, ((x + y) * 11) as u8]));
        for (w, h) in [(40, 30), (6, 4), (29, 7)] {
            let whole = resize_window(&image, w, h, full(w, h));
            let window = Window { left: w / 4, top: h / 3, width: w / 2, height: h / 2 };
            let part = resize_window(&image, w, h, window);
            let cropped =
                image::imageops::crop_imm(&whole, window.left, window.top, window.width, window.height).to_image();
            assert_eq!(part, cropped, "{w}x{h}");
        }
    }

    #[test]
    fn uniform_stays_uniform_and_upscaling_interpolates() {
        let flat = RgbImage::from_pixel(3, 3, Rgb([17, 200, 99]));
        assert!(resize_window(&flat, 10, 8, full(10, 8)).pixels().all(|p| p.0 == [17, 200, 99]));
        // Two pixels 0 and 200 doubled: centres at 0.25 and 0.75 of the first/second pixel.
        let pair = RgbImage::from_fn(2, 1, |x, _| Rgb([(x * 200) as u8; 3]));
        let out = resize_window(&pair, 4, 1, full(4, 1));
        let reds: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert_eq!(reds, vec![0, 50, 150, 200]);
    }

    #[test]
    fn shrinking_averages() {
        let stripes = RgbImage::from_fn(8, 2, |x, _| Rgb([if x % 2 == 0 { 0 } else { 200 }; 3]));
        let out = resize_window(&stripes, 2, 1, full(2, 1));
        for p in out.pixels() {
            assert!((90..=110).contains(&p.0[0]), "{p:?}");
        }
    }
}
