//! A loaded model and its forward pass: `softmax(W2 · relu(W1 · x + b1) + b2)`.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::format::{self, MlpWeights, ReadModelError};

/// The file name looked for when `--model` names a directory.
pub const MODEL_FILE_NAME: &str = "model.safetensors";

/// A two-layer perceptron classifier loaded from a safetensors file.
#[derive(Debug, Clone)]
pub struct Model {
    name: String,
    labels: Vec<String>,
    sha256: String,
    weights: MlpWeights,
}

/// What `GET /v1/models` tells about the model: never weights, never the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's name from its metadata.
    pub name: String,
    /// Lowercase hex SHA-256 of the whole model file.
    pub sha256: String,
    /// Number of input features a prediction takes.
    pub inputs: usize,
    /// Number of output classes.
    pub outputs: usize,
    /// One label per output class.
    pub labels: Vec<String>,
    /// Number of learned parameters.
    pub parameters: usize,
}

/// The answer to one prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Class probabilities (softmax), one per label, summing to 1.
    pub outputs: Vec<f32>,
    /// The label of the most probable class (the first one on a tie).
    pub label: String,
}

/// Loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    /// The file could not be opened or read.
    #[error(
        "cannot read model file {path}: {source}; pass --model with a .safetensors file \
         or a directory holding {MODEL_FILE_NAME}"
    )]
    Read {
        /// The model file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid demo model.
    #[error("model file {path} is not a valid veil demo model: {source}")]
    Invalid {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ReadModelError,
    },
}

/// A prediction request was not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictError {
    /// The number of inputs differs from the model's input size.
    #[error("expected {expected} input values, got {found}")]
    WrongInputCount {
        /// The model's input size.
        expected: usize,
        /// The number of values given.
        found: usize,
    },
    /// An input is NaN or infinite (also when it overflows a 32-bit float).
    #[error("input {index} is {value}, expected a finite 32-bit float")]
    NonFiniteInput {
        /// Position of the value.
        index: usize,
        /// The value as a 32-bit float.
        value: f32,
    },
    /// The inputs are so large that the network overflowed.
    #[error("the inputs are too large: the network's outputs are not finite numbers")]
    NonFiniteOutput,
}

/// `path` itself if it is a file, `path/model.safetensors` if it is a directory.
pub fn resolve_model_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(MODEL_FILE_NAME)
    } else {
        path.to_owned()
    }
}

impl Model {
    /// Loads the model at `path` (a `.safetensors` file or a directory holding
    /// `model.safetensors`) and hashes the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, LoadModelError> {
        let path = resolve_model_path(path.as_ref());
        let read_error = |source| LoadModelError::Read {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(read_error)?;
        // SAFETY: the map is read-only and dropped before this function returns. The model lives in
        // a read-only volume; should someone truncate it anyway, reads fault rather than return
        // torn data. Mapping instead of reading keeps a 256 MiB model in a tmpfs from being held
        // twice in guest RAM.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(read_error)?;
        let sha256 = hex::encode(Sha256::digest(&bytes[..]));
        let (weights, metadata) =
            format::read_model_bytes(&bytes).map_err(|source| LoadModelError::Invalid {
                path: path.clone(),
                source,
            })?;
        Ok(Model {
            name: metadata.name,
            labels: metadata.labels,
            sha256,
            weights,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lowercase hex SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// One label per output class.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Number of learned parameters.
    pub fn parameter_count(&self) -> usize {
        self.weights.parameter_count()
    }

    /// The public description served by `GET /v1/models`.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            inputs: self.weights.inputs,
            outputs: self.weights.outputs,
            labels: self.labels.clone(),
            parameters: self.parameter_count(),
        }
    }

    /// Classifies one input vector.
    pub fn predict(&self, inputs: &[f32]) -> Result<Prediction, PredictError> {
        self.check_inputs(inputs)?;
        let w = &self.weights;
        let hidden: Vec<f32> = dense(&w.layer1_weight, &w.layer1_bias, inputs)
            .into_iter()
            .map(relu)
            .collect();
        let logits = dense(&w.layer2_weight, &w.layer2_bias, &hidden);
        let outputs = softmax(&logits);
        if outputs.iter().any(|value| !value.is_finite()) {
            return Err(PredictError::NonFiniteOutput);
        }
        let label = self.labels[argmax(&outputs)].clone();
        Ok(Prediction { outputs, label })
    }

    fn check_inputs(&self, inputs: &[f32]) -> Result<(), PredictError> {
        if inputs.len() != self.weights.inputs {
            return Err(PredictError::WrongInputCount {
                expected: self.weights.inputs,
                found: inputs.len(),
            });
        }
        match inputs.iter().position(|value| !value.is_finite()) {
            Some(index) => Err(PredictError::NonFiniteInput {
                index,
                value: inputs[index],
            }),
            None => Ok(()),
        }
    }
}

/// `weight · input + bias` for a row-major `[bias.len(), input.len()]` matrix.
pub(crate) fn dense(weight: &[f32], bias: &[f32], input: &[f32]) -> Vec<f32> {
    weight
        .chunks_exact(input.len())
        .zip(bias)
        .map(|(row, bias)| {
            row.iter()
                .zip(input)
                .fold(*bias, |sum, (weight, x)| sum + weight * x)
        })
        .collect()
}

/// The hidden layer's activation.
pub(crate) fn relu(value: f32) -> f32 {
    value.max(0.0)
}

/// Softmax shifted by the largest logit so that `exp` cannot overflow for finite logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|logit| (logit - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|value| value / sum).collect()
}

/// Index of the largest value; the first on a tie. `values` is never empty here because a
/// loaded model has at least one output.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = index;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::{Dtype, TensorView};

    use super::*;
    use crate::format::{ModelMetadata, LAYER1_BIAS, LAYER1_WEIGHT, LAYER2_BIAS, LAYER2_WEIGHT};

    /// Two inputs, two hidden units, two classes: hidden = relu(x), logits = hidden + [0, ln 3].
    fn tiny_model() -> Model {
        let weights = MlpWeights {
            inputs: 2,
            hidden: 2,
            outputs: 2,
            layer1_weight: vec![1.0, 0.0, 0.0, 1.0],
            layer1_bias: vec![0.0, 0.0],
            layer2_weight: vec![1.0, 0.0, 0.0, 1.0],
            layer2_bias: vec![0.0, 3.0f32.ln()],
        };
        Model {
            name: "tiny".to_owned(),
            labels: vec!["left".to_owned(), "right".to_owned()],
            sha256: String::new(),
            weights,
        }
    }

    fn assert_close(found: &[f32], expected: &[f32]) {
        assert_eq!(found.len(), expected.len());
        for (f, e) in found.iter().zip(expected) {
            assert!(
                (f - e).abs() < 1e-6,
                "found {found:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn predict_matches_hand_computation() {
        // x = [0, 0]: logits [0, ln 3] -> softmax [1/4, 3/4].
        let prediction = tiny_model().predict(&[0.0, 0.0]).unwrap();
        assert_close(&prediction.outputs, &[0.25, 0.75]);
        assert_eq!(prediction.label, "right");

        // x = [ln 9, -5]: relu cuts the -5; logits [ln 9, ln 3] -> [9/12, 3/12].
        let prediction = tiny_model().predict(&[9.0f32.ln(), -5.0]).unwrap();
        assert_close(&prediction.outputs, &[0.75, 0.25]);
        assert_eq!(prediction.label, "left");
    }

    #[test]
    fn predict_refuses_wrong_input_count() {
        assert_eq!(
            tiny_model().predict(&[1.0, 2.0, 3.0]).unwrap_err(),
            PredictError::WrongInputCount {
                expected: 2,
                found: 3
            }
        );
    }

    #[test]
    fn predict_refuses_non_finite_inputs() {
        let error = tiny_model().predict(&[1.0, f32::NAN]).unwrap_err();
        assert!(
            matches!(error, PredictError::NonFiniteInput { index: 1, .. }),
            "{error}"
        );
        let error = tiny_model().predict(&[f32::INFINITY, 1.0]).unwrap_err();
        assert!(
            matches!(error, PredictError::NonFiniteInput { index: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn predict_refuses_inputs_that_overflow_the_network() {
        let mut model = tiny_model();
        model.weights.layer1_weight = vec![f32::MAX, 0.0, 0.0, 1.0];
        assert_eq!(
            model.predict(&[10.0, 0.0]).unwrap_err(),
            PredictError::NonFiniteOutput
        );
    }

    fn write_raw(
        dir: &Path,
        tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
        metadata: Option<&str>,
    ) -> PathBuf {
        let path = dir.join(MODEL_FILE_NAME);
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                (
                    *name,
                    TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        let header =
            metadata.map(|json| HashMap::from([("veil.model".to_owned(), json.to_owned())]));
        safetensors::serialize_to_file(views, header, &path).unwrap();
        path
    }

    fn f32s(count: usize) -> Vec<u8> {
        vec![0; count * 4]
    }

    fn valid_tensors() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        vec![
            (LAYER1_WEIGHT, Dtype::F32, vec![3, 2], f32s(6)),
            (LAYER1_BIAS, Dtype::F32, vec![3], f32s(3)),
            (LAYER2_WEIGHT, Dtype::F32, vec![2, 3], f32s(6)),
            (LAYER2_BIAS, Dtype::F32, vec![2], f32s(2)),
        ]
    }

    const VALID_METADATA: &str = r#"{"name":"raw","labels":["a","b"]}"#;

    fn load_error(
        tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
        metadata: Option<&str>,
    ) -> ReadModelError {
        let dir = tempfile::tempdir().unwrap();
        let path = write_raw(dir.path(), tensors, metadata);
        match Model::load(&path).unwrap_err() {
            LoadModelError::Invalid {
                path: reported,
                source,
            } => {
                assert_eq!(reported, path);
                source
            }
            other => panic!("expected an invalid-model error, got {other}"),
        }
    }

    #[test]
    fn loads_a_directory_and_hashes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_raw(dir.path(), &valid_tensors(), Some(VALID_METADATA));
        let model = Model::load(dir.path()).unwrap();
        let expected = hex::encode(Sha256::digest(std::fs::read(path).unwrap()));
        assert_eq!(model.sha256(), expected);
        assert_eq!(
            model.info(),
            ModelInfo {
                name: "raw".to_owned(),
                sha256: expected,
                inputs: 2,
                outputs: 2,
                labels: vec!["a".to_owned(), "b".to_owned()],
                parameters: 17,
            }
        );
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = Model::load(dir.path()).unwrap_err();
        assert!(matches!(error, LoadModelError::Read { .. }), "{error}");
        assert!(error.to_string().contains(MODEL_FILE_NAME), "{error}");
    }

    #[test]
    fn non_safetensors_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"this is not a model").unwrap();
        let error = Model::load(&path).unwrap_err();
        assert!(
            matches!(
                error,
                LoadModelError::Invalid {
                    source: ReadModelError::NotSafetensors(_),
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn missing_metadata_is_refused() {
        let error = load_error(&valid_tensors(), None);
        assert!(matches!(error, ReadModelError::MissingMetadata), "{error}");
        let error = load_error(&valid_tensors(), Some(r#"{"name":"x"}"#));
        assert!(matches!(error, ReadModelError::BadMetadata(_)), "{error}");
    }

    #[test]
    fn missing_tensor_is_refused() {
        let mut tensors = valid_tensors();
        tensors.remove(3);
        let error = load_error(&tensors, Some(VALID_METADATA));
        assert!(
            matches!(error, ReadModelError::MissingTensor { tensor } if tensor == LAYER2_BIAS),
            "{error}"
        );
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let mut tensors = valid_tensors();
        tensors[2] = (LAYER2_WEIGHT, Dtype::F32, vec![2, 4], f32s(8));
        let error = load_error(&tensors, Some(VALID_METADATA));
        assert!(
            matches!(error, ReadModelError::WrongShape { tensor, .. } if tensor == LAYER2_WEIGHT),
            "{error}"
        );

        let mut tensors = valid_tensors();
        tensors[0] = (LAYER1_WEIGHT, Dtype::F32, vec![6], f32s(6));
        let error = load_error(&tensors, Some(VALID_METADATA));
        assert!(
            matches!(error, ReadModelError::WrongShape { tensor, .. } if tensor == LAYER1_WEIGHT),
            "{error}"
        );
    }

    #[test]
    fn wrong_dtype_is_refused() {
        let mut tensors = valid_tensors();
        tensors[1] = (LAYER1_BIAS, Dtype::F64, vec![3], vec![0; 24]);
        let error = load_error(&tensors, Some(VALID_METADATA));
        assert!(
            matches!(error, ReadModelError::WrongDtype { tensor, found: Dtype::F64 } if tensor == LAYER1_BIAS),
            "{error}"
        );
    }

    #[test]
    fn metadata_struct_matches_the_raw_json_used_here() {
        let parsed: ModelMetadata = serde_json::from_str(VALID_METADATA).unwrap();
        assert_eq!(parsed.labels.len(), 2);
    }
}
