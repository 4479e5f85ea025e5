//! The ONNX classifier: what the model expects (read from the model itself) and batched runs.

use std::path::Path;

use anyhow::{bail, Context};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

/// Input and output layout of an ImageNet-style classifier, as declared by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub input_name: String,
    pub output_name: String,
    /// Image height and width the model takes (NCHW input `[N, 3, height, width]`).
    pub height: usize,
    pub width: usize,
    /// `Some(n)` when the model's batch dimension is fixed to `n`; `None` when it is dynamic.
    pub fixed_batch: Option<usize>,
    /// Number of scores per image; `None` when the model leaves it symbolic (checked on each run).
    pub num_classes: Option<usize>,
}

impl ModelSpec {
    /// Reads the spec from a loaded session (see [`ModelSpec::from_outlets`]).
    pub fn from_session(session: &Session) -> anyhow::Result<ModelSpec> {
        let describe = |outlet: &ort::value::Outlet| (outlet.name().to_owned(), outlet.dtype().clone());
        let inputs: Vec<(String, ValueType)> = session.inputs().iter().map(describe).collect();
        let outputs: Vec<(String, ValueType)> = session.outputs().iter().map(describe).collect();
        ModelSpec::from_outlets(&inputs, &outputs)
    }

    /// Refuses anything but a single NCHW f32 image input (`[N, 3, H, W]`, H and W fixed); the
    /// first output must hold f32 scores `[N, C]` (or `[N, C, 1, 1]`).
    pub fn from_outlets(inputs: &[(String, ValueType)], outputs: &[(String, ValueType)]) -> anyhow::Result<ModelSpec> {
        let [(input_name, input_type)] = inputs else {
            let names: Vec<&str> = inputs.iter().map(|(name, _)| name.as_str()).collect();
            bail!("model has {} inputs ({names:?}); expected exactly one image input [N,3,H,W]", inputs.len());
        };
        let (ty, dims) =
            tensor_layout(input_type).with_context(|| format!("model input `{input_name}` is not a tensor"))?;
        if ty != TensorElementType::Float32 || dims.len() != 4 || dims[1] != 3 || dims[2] <= 0 || dims[3] <= 0 {
            bail!(
                "model input `{input_name}` is {ty:?} {dims:?}; expected float32 [N,3,H,W] with \
                 fixed H and W (NCHW RGB, the ImageNet convention)"
            );
        }
        let fixed_batch = usize::try_from(dims[0]).ok().filter(|&n| n > 0);

        let Some((output_name, output_type)) = outputs.first() else {
            bail!("model declares no output");
        };
        let (out_ty, out_dims) =
            tensor_layout(output_type).with_context(|| format!("model output `{output_name}` is not a tensor"))?;
        let trailing_ones = out_dims.len() >= 2 && out_dims[2..].iter().all(|&d| d == 1);
        if out_ty != TensorElementType::Float32 || !trailing_ones {
            bail!(
                "model output `{output_name}` is {out_ty:?} {out_dims:?}; expected float32 \
                 scores [N,C] (or [N,C,1,1])"
            );
        }
        let num_classes = usize::try_from(out_dims[1]).ok().filter(|&c| c > 0);
        Ok(ModelSpec {
            input_name: input_name.clone(),
            output_name: output_name.clone(),
            height: dims[2] as usize,
            width: dims[3] as usize,
            fixed_batch,
            num_classes,
        })
    }

    /// Number of f32 values of one preprocessed image (3 × H × W).
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }
}

fn tensor_layout(dtype: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

/// Top-1 result for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub class_index: usize,
    /// Softmax probability of `class_index`.
    pub score: f32,
}

impl Prediction {
    /// Arg-max of one row of scores. Raw logits go through softmax; a row that already is a
    /// probability distribution (non-negative, summing to 1) is taken as is.
    ///
    /// Ties go to the lowest index, as with numpy's `argmax`: quantized models give few distinct
    /// output values, so ties at the top do happen.
    pub fn from_scores(scores: &[f32]) -> Option<Prediction> {
        let (class_index, best) = first_max(scores)?;
        let sum: f64 = scores.iter().map(|&v| f64::from(v)).sum();
        let is_distribution = scores.iter().all(|&v| v >= 0.0) && (sum - 1.0).abs() < 1e-3;
        let score = if is_distribution {
            best
        } else {
            let max = f64::from(best);
            let denom: f64 = scores.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            (1.0 / denom) as f32
        };
        Some(Prediction { class_index, score })
    }
}

/// Index and value of the first largest non-NaN score.
pub fn first_max(scores: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (index, &value) in scores.iter().enumerate() {
        if !value.is_nan() && best.is_none_or(|(_, top)| value > top) {
            best = Some((index, value));
        }
    }
    best
}

/// Knobs for the ONNX Runtime session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Intra-op threads; `None` lets ONNX Runtime choose (one per physical core).
    pub intra_threads: Option<usize>,
}

/// An ONNX image classifier session with its spec.
pub struct Classifier {
    session: Session,
    spec: ModelSpec,
    /// Scratch buffer for padding batches of fixed-batch models.
    padded: Vec<f32>,
}

impl Classifier {
    pub fn load(env: &Environment, model: &Path, options: &SessionOptions) -> anyhow::Result<Classifier> {
        let mut builder = Session::builder(env)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(threads) = options.intra_threads {
            builder = builder.with_intra_threads(threads).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let session = builder
            .commit_from_file(model)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot load ONNX model {}", model.display()))?;
        let spec =
            ModelSpec::from_session(&session).with_context(|| format!("unsupported model {}", model.display()))?;
        Ok(Classifier { session, spec, padded: Vec::new() })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Largest batch one run accepts (the fixed batch size, or `wanted` for dynamic models).
    pub fn batch_limit(&self, wanted: usize) -> usize {
        self.spec.fixed_batch.unwrap_or(wanted).max(1)
    }

    /// Raw output rows for `count` images stored back to back (NCHW) in `pixels`.
    pub fn scores(&mut self, pixels: &[f32], count: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let image_len = self.spec.image_len();
        if count == 0 || pixels.len() != count * image_len {
            bail!("batch holds {} values, expected {count} images of {image_len}", pixels.len());
        }
        let batch = match self.spec.fixed_batch {
            Some(fixed) if count > fixed => {
                bail!("batch of {count} exceeds the model's fixed batch {fixed}")
            }
            Some(fixed) => fixed,
            None => count,
        };
        let input: &[f32] = if batch == count {
            pixels
        } else {
            self.padded.clear();
            self.padded.extend_from_slice(pixels);
            self.padded.resize(batch * image_len, 0.0);
            &self.padded
        };
        let shape = [batch, 3, self.spec.height, self.spec.width];
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let outputs = self
            .session
            .run(ort::inputs![self.spec.input_name.as_str() => tensor])
            .map_err(|e| anyhow::anyhow!("ONNX Runtime run failed: {e}"))?;
        let (_, values) = outputs[self.spec.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow::anyhow!("model output is not f32: {e}"))?;
        if values.is_empty() || values.len() % batch != 0 {
            bail!("model returned {} scores for a batch of {batch}", values.len());
        }
        let per_image = values.len() / batch;
        if let Some(expected) = self.spec.num_classes {
            if per_image != expected {
                bail!("model returned {per_image} scores per image, declared {expected}");
            }
        }
        Ok(values.chunks_exact(per_image).take(count).map(<[f32]>::to_vec).collect())
    }

    /// Top-1 prediction for each of `count` images.
    pub fn classify(&mut self, pixels: &[f32], count: usize) -> anyhow::Result<Vec<Prediction>> {
        self.scores(pixels, count)?
            .iter()
            .map(|row| Prediction::from_scores(row).context("model returned only NaN scores"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ort::value::{Shape, SymbolicDimensions};

    fn tensor(ty: TensorElementType, dims: &[i64]) -> ValueType {
        ValueType::Tensor {
            ty,
            shape: Shape::new(dims.iter().copied()),
            dimension_symbols: SymbolicDimensions::empty(dims.len()),
        }
    }

    fn outlet(name: &str, dims: &[i64]) -> (String, ValueType) {
        (name.to_owned(), tensor(TensorElementType::Float32, dims))
    }

    #[test]
    fn the_spec_comes_from_the_declared_layout() {
        let spec = ModelSpec::from_outlets(
            &[outlet("data", &[-1, 3, 299, 320])],
            &[outlet("prob", &[-1, 1000, 1, 1]), outlet("aux", &[-1, 5])],
        )
        .unwrap();
        assert_eq!(spec.input_name, "data");
        assert_eq!(spec.output_name, "prob");
        assert_eq!((spec.height, spec.width), (299, 320));
        assert_eq!(spec.fixed_batch, None);
        assert_eq!(spec.num_classes, Some(1000));
        assert_eq!(spec.image_len(), 3 * 299 * 320);

        let fixed = ModelSpec::from_outlets(&[outlet("x", &[4, 3, 8, 8])], &[outlet("y", &[4, -1])]).unwrap();
        assert_eq!(fixed.fixed_batch, Some(4));
        assert_eq!(fixed.num_classes, None);
    }

    #[test]
    fn other_layouts_are_refused_with_the_reason() {
        let out = [outlet("y", &[-1, 1000])];
        let refusal = |inputs: &[(String, ValueType)], outputs: &[(String, ValueType)]| {
            ModelSpec::from_outlets(inputs, outputs).unwrap_err().to_string()
        };
        assert!(refusal(&[outlet("nhwc", &[-1, 224, 224, 3])], &out).contains("expected float32 [N,3,H,W]"));
        assert!(refusal(&[outlet("any", &[-1, 3, -1, -1])], &out).contains("fixed H and W"));
        let int_input = ("u8".to_owned(), tensor(TensorElementType::Uint8, &[-1, 3, 224, 224]));
        assert!(refusal(&[int_input], &out).contains("Uint8"));
        assert!(refusal(&[outlet("a", &[-1, 3, 8, 8]), outlet("b", &[1])], &out).contains("2 inputs"));
        assert!(refusal(&[outlet("x", &[-1, 3, 8, 8])], &[]).contains("no output"));
        assert!(refusal(&[outlet("x", &[-1, 3, 8, 8])], &[outlet("map", &[-1, 10, 7, 7])]).contains("scores [N,C]"));
    }

    #[test]
    fn softmax_of_logits() {
        let p = Prediction::from_scores(&[1.0, 3.0, 2.0]).unwrap();
        assert_eq!(p.class_index, 1);
        let expected = 1.0 / (1.0 + (-2.0f64).exp() + (-1.0f64).exp());
        assert!((f64::from(p.score) - expected).abs() < 1e-6, "{}", p.score);
    }

    #[test]
    fn probabilities_pass_through() {
        let p = Prediction::from_scores(&[0.2, 0.5, 0.3]).unwrap();
        assert_eq!(p.class_index, 1);
        assert_eq!(p.score, 0.5);
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        assert_eq!(Prediction::from_scores(&[0.5, 2.0, 1.0, 2.0]).unwrap().class_index, 1);
    }

    #[test]
    fn nan_rows_have_no_prediction() {
        assert!(Prediction::from_scores(&[f32::NAN, f32::NAN]).is_none());
        assert!(Prediction::from_scores(&[]).is_none());
        assert_eq!(Prediction::from_scores(&[f32::NAN, -1.0]).unwrap().class_index, 1);
    }
}
