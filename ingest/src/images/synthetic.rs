//! Images made on the fly with a label known by construction: a coloured square on a dark
//! background, the colour naming the label. Image `i` always has the same label and pixels.

use image::{Rgb, RgbImage};

/// The labels and their colours, in the order image indices cycle through them.
pub const CLASSES: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [230, 220, 40]),
    ("magenta", [210, 40, 200]),
    ("cyan", [40, 210, 220]),
];

#[derive(Clone, Debug)]
pub struct Synthetic {
    pub side: u32,
}

impl Synthetic {
    pub fn label(&self, index: usize) -> &'static str {
        CLASSES[index % CLASSES.len()].0
    }

    /// A `side`×`side` image: background grey level and square position vary with `index`, so
    /// that consecutive images of one label differ.
    pub fn image(&self, index: usize) -> RgbImage {
        let side = self.side.max(4);
        let colour = Rgb(CLASSES[index % CLASSES.len()].1);
        let round = index / CLASSES.len();
        let grey = (round * 37 % 64) as u8;
        let square = side / 2;
        let span = side - square;
        let x0 = (round as u32 * 7) % (span + 1);
        let y0 = (round as u32 * 13) % (span + 1);
        RgbImage::from_fn(side, side, |x, y| {
            let inside = (x0..x0 + square).contains(&x) && (y0..y0 + square).contains(&y);
            if inside {
                colour
            } else {
                Rgb([grey, grey, grey])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cycle_and_images_are_deterministic() {
        let s = Synthetic { side: 32 };
        assert_eq!(s.label(0), "red");
        assert_eq!(s.label(7), "green");
        assert_eq!(s.image(7), s.image(7));
        assert_ne!(s.image(1), s.image(7), "same label, different picture");
    }

    #[test]
    fn the_square_has_the_label_colour() {
        let s = Synthetic { side: 32 };
        for index in 0..40 {
            let img = s.image(index);
            let colour = CLASSES.iter().find(|(l, _)| *l == s.label(index)).unwrap().1;
            let coloured = img.pixels().filter(|p| p.0 == colour).count();
            assert_eq!(coloured, 16 * 16, "image {index}");
        }
    }

    #[test]
    fn tiny_sizes_still_make_an_image() {
        let img = Synthetic { side: 1 }.image(3);
        assert_eq!(img.dimensions(), (4, 4));
    }
}
