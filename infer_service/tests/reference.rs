//! The service's preprocessing and model run against onnxruntime's own Python API on the same
//! pictures (tests/reference.py), and against the known top-1 of the first CIFAR-10 test
//! records listed in the assets' SOURCES.md.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use iot_infer_service::model::{first_max, Classifier, SessionOptions};
use iot_infer_service::preprocess::{Preprocessor, DEFAULT_RESIZE_RATIO};
use iot_infer_service::runtime;
use serde_json::Value;

const RECORDS: usize = 10;

/// Top-1 ImageNet index of CIFAR-10 test records 0..9 with the int8 MobileNetV2, upscaled
/// straight to 224×224 (SOURCES.md, "Verification run"; e.g. 2 ship → 628 liner, 4 frog → 32 tailed frog).
const SOURCES_TOP1_DIRECT: [usize; RECORDS] = [674, 761, 628, 675, 32, 278, 491, 29, 359, 675];

/// What reference.py wrote: every file (read into memory; the folder is gone) and results.json.
struct Reference {
    files: HashMap<String, Vec<u8>>,
    results: Value,
}

impl Reference {
    fn file(&self, name: &str) -> &[u8] {
        self.files.get(name).unwrap_or_else(|| panic!("reference.py wrote no {name}"))
    }

    fn records(&self) -> &[Value] {
        self.results["records"].as_array().expect("records")
    }
}

/// Runs reference.py once for all tests of this binary.
fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference.py");
        let output = Command::new(common::python())
            .arg(&script)
            .arg("--model")
            .arg(common::int8_model())
            .arg("--cifar")
            .arg(common::cifar_test_batch())
            .arg("--records")
            .arg(RECORDS.to_string())
            .arg("--out")
            .arg(dir.path())
            .output()
            .expect("cannot run the reference script");
        assert!(
            output.status.success(),
            "reference.py failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir.path()).expect("reference output") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            files.insert(name, std::fs::read(&path).expect("reference file"));
        }
        let results =
            serde_json::from_slice(files.get("results.json").expect("results.json")).expect("results.json is JSON");
        Reference { files, results }
    })
}

fn classifier() -> Classifier {
    let env = runtime::environment(&common::onnxruntime()).expect("ONNX Runtime");
    Classifier::load(&env, &common::int8_model(), &SessionOptions::default()).expect("model loads")
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn python_logits(record: &Value, key: &str) -> Vec<f32> {
    record[key].as_array().expect(key).iter().map(|v| v.as_f64().expect("number") as f32).collect()
}

/// First index of the largest score (numpy's `argmax`).
fn argmax(row: &[f32]) -> usize {
    first_max(row).expect("non-empty row").0
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Prepares each record's file `name(i)` with `preprocessor` and runs them as one batch.
fn rust_side(preprocessor: &Preprocessor, name: impl Fn(usize) -> String) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let tensors: Vec<Vec<f32>> = (0..RECORDS)
        .map(|i| preprocessor.prepare(reference().file(&name(i))).expect("reference image decodes"))
        .collect();
    let batch: Vec<f32> = tensors.concat();
    let scores = classifier().scores(&batch, RECORDS).expect("model runs");
    (tensors, scores)
}

#[test]
fn model_spec_is_read_from_the_model() {
    let classifier = classifier();
    let spec = classifier.spec();
    assert_eq!(spec.input_name, "input");
    assert_eq!(spec.output_name, "output");
    assert_eq!((spec.height, spec.width), (224, 224));
    assert_eq!(spec.fixed_batch, None);
    assert_eq!(spec.num_classes, Some(1000));
}

/// Compares the service's tensors and logits for the files `rec<i>_<suffix>.png` with
/// reference.py's `<tensor>{i}.f32` and `<variant>_logits`: all must be bit-exact.
fn assert_same_as_python(suffix: &str, tensor: &str, variant: &str) {
    let reference = reference();
    let preprocessor = Preprocessor::new(224, 224, DEFAULT_RESIZE_RATIO, u64::MAX);
    let (tensors, scores) = rust_side(&preprocessor, |i| format!("rec{i}_{suffix}.png"));
    for (i, record) in reference.records().iter().enumerate() {
        let python_tensor = f32_values(reference.file(&format!("{tensor}{i}.f32")));
        assert_eq!(tensors[i].len(), python_tensor.len(), "{suffix} {i}: tensor length");
        let first_difference = tensors[i].iter().zip(&python_tensor).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            first_difference.map(|at| (at, tensors[i][at], python_tensor[at])),
            None,
            "{suffix} {i}: tensors differ at (index, rust, python)"
        );
        let python = python_logits(record, &format!("{variant}_logits"));
        let diff = max_abs_diff(&scores[i], &python);
        assert!(diff <= 1e-4, "{suffix} {i}: logits differ by up to {diff}");
        let python_top1 = record[format!("{variant}_top1")].as_u64().expect("top1") as usize;
        assert_eq!(argmax(&scores[i]), python_top1, "{suffix} {i}: top-1");
    }
}

/// A 256×256 picture needs no resize for a 224 model: only the crop and the normalisation.
#[test]
fn crop_and_normalisation_match_python_bit_for_bit() {
    assert_same_as_python("256", "png256_", "png256");
}

/// 32×32 → 256×256 → crop 224: the resize follows Pillow's arithmetic, so this is exact too.
#[test]
fn upscaling_matches_python_bit_for_bit() {
    assert_same_as_python("32", "crop", "crop");
}

/// 500×375 → 341×256 (antialiased shrink) → crop 224.
#[test]
fn shrinking_a_non_square_picture_matches_python_bit_for_bit() {
    assert_same_as_python("photo", "photo", "photo");
}

/// Straight 32→224 upscale (resize ratio 1), the recipe of the SOURCES.md verification run.
#[test]
fn known_records_give_their_known_classes() {
    let reference = reference();
    let preprocessor = Preprocessor::new(224, 224, 1.0, u64::MAX);
    let (_, scores) = rust_side(&preprocessor, |i| format!("rec{i}_32.png"));
    let rust: Vec<usize> = scores.iter().map(|row| argmax(row)).collect();
    let python: Vec<usize> =
        reference.records().iter().map(|r| r["direct_top1"].as_u64().expect("top1") as usize).collect();
    assert_eq!(python, SOURCES_TOP1_DIRECT, "Python reference disagrees with SOURCES.md");
    assert_eq!(rust[2], 628, "record 2 (ship) should be 628 liner");
    assert_eq!(rust[4], 32, "record 4 (frog) should be 32 tailed frog");
    assert_eq!(rust, SOURCES_TOP1_DIRECT);
}
