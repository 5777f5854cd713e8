//! The on-disk layout of a veil demo model: a two-layer perceptron in one safetensors file.
//!
//! Tensors, all little-endian `F32` in PyTorch's `[out, in]` convention:
//!
//! | name            | shape               |
//! |-----------------|---------------------|
//! | `layer1.weight` | `[hidden, inputs]`  |
//! | `layer1.bias`   | `[hidden]`          |
//! | `layer2.weight` | `[outputs, hidden]` |
//! | `layer2.bias`   | `[outputs]`         |
//! | `padding`       | `[n]`, `U8`, optional: ignored, lets benchmarks ship large models |
//!
//! The safetensors `__metadata__` holds one entry, [`METADATA_KEY`], whose value is the JSON of
//! [`ModelMetadata`] (name, class labels, canary). One entry rather than one per field because
//! safetensors keeps metadata in a std `HashMap`, whose order changes from process to process, and
//! the demo model must be byte-for-byte reproducible.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

/// The `__metadata__` key whose value is the JSON of [`ModelMetadata`].
pub const METADATA_KEY: &str = "veil.model";
/// Weights of the hidden layer, `[hidden, inputs]`.
pub const LAYER1_WEIGHT: &str = "layer1.weight";
/// Bias of the hidden layer, `[hidden]`.
pub const LAYER1_BIAS: &str = "layer1.bias";
/// Weights of the output layer, `[outputs, hidden]`.
pub const LAYER2_WEIGHT: &str = "layer2.weight";
/// Bias of the output layer, `[outputs]`.
pub const LAYER2_BIAS: &str = "layer2.bias";
/// Optional filler bytes that make a model as large as a benchmark needs; never read for inference.
pub const PADDING: &str = "padding";

/// What a model says about itself, stored as JSON under [`METADATA_KEY`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMetadata {
    /// Human-readable model name, shown by `GET /v1/models` and in logs.
    pub name: String,
    /// One label per output class, in output order.
    pub labels: Vec<String>,
    /// A marker string that exists only in the plaintext model, so that tests can prove the
    /// plaintext never reached the host by searching the host's files for it. Never served or
    /// logged, since the serving container's logs are readable on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

// Hand-written so that the canary cannot leak into logs through `{:?}`.
impl fmt::Debug for ModelMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelMetadata")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("canary", &self.canary.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The parameters of a two-layer perceptron, row-major in `[out, in]` order.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    /// Number of input features.
    pub inputs: usize,
    /// Number of hidden units.
    pub hidden: usize,
    /// Number of output classes.
    pub outputs: usize,
    /// `hidden * inputs` values.
    pub layer1_weight: Vec<f32>,
    /// `hidden` values.
    pub layer1_bias: Vec<f32>,
    /// `outputs * hidden` values.
    pub layer2_weight: Vec<f32>,
    /// `outputs` values.
    pub layer2_bias: Vec<f32>,
}

impl MlpWeights {
    /// Number of learned parameters (weights and biases of both layers).
    pub fn parameter_count(&self) -> usize {
        self.layer1_weight.len()
            + self.layer1_bias.len()
            + self.layer2_weight.len()
            + self.layer2_bias.len()
    }
}

/// Writing a model file failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteModelFileError {
    /// The metadata could not be encoded as JSON.
    #[error("cannot encode the model metadata as JSON: {0}")]
    EncodeMetadata(#[source] serde_json::Error),
    /// A weight vector does not match the declared layer sizes.
    #[error("tensor {tensor} does not match the declared layer sizes: {source}")]
    TensorSize {
        /// The tensor's name.
        tensor: &'static str,
        /// What safetensors found wrong.
        #[source]
        source: SafeTensorError,
    },
    /// safetensors could not write the file.
    #[error("cannot write model file {path}: {source}; check that the directory is writable and has room")]
    Serialize {
        /// The file being written.
        path: PathBuf,
        /// What safetensors reported.
        #[source]
        source: SafeTensorError,
    },
    /// The file's mode could not be set.
    #[error("cannot make {path} readable (mode 0644): {source}")]
    SetPermissions {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The finished file could not be moved into place.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The final path.
        to: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `weights`, `metadata` and `padding` (omitted when empty) to `path` as safetensors.
///
/// The file is written next to `path`, made readable (0644) and renamed into place, so a reader
/// never sees half a model.
pub fn write_model_file(
    path: &Path,
    weights: &MlpWeights,
    metadata: &ModelMetadata,
    padding: &[u8],
) -> Result<(), WriteModelFileError> {
    let metadata_json =
        serde_json::to_string(metadata).map_err(WriteModelFileError::EncodeMetadata)?;
    let header = HashMap::from([(METADATA_KEY.to_owned(), metadata_json)]);

    let layer_bytes = [
        (LAYER1_WEIGHT, f32_le_bytes(&weights.layer1_weight)),
        (LAYER1_BIAS, f32_le_bytes(&weights.layer1_bias)),
        (LAYER2_WEIGHT, f32_le_bytes(&weights.layer2_weight)),
        (LAYER2_BIAS, f32_le_bytes(&weights.layer2_bias)),
    ];
    let shapes = [
        vec![weights.hidden, weights.inputs],
        vec![weights.hidden],
        vec![weights.outputs, weights.hidden],
        vec![weights.outputs],
    ];
    let mut tensors = Vec::with_capacity(layer_bytes.len() + 1);
    for ((name, bytes), shape) in layer_bytes.iter().zip(shapes) {
        let view = TensorView::new(Dtype::F32, shape, bytes).map_err(|source| {
            WriteModelFileError::TensorSize {
                tensor: name,
                source,
            }
        })?;
        tensors.push((*name, view));
    }
    if !padding.is_empty() {
        let view = TensorView::new(Dtype::U8, vec![padding.len()], padding).map_err(|source| {
            WriteModelFileError::TensorSize {
                tensor: PADDING,
                source,
            }
        })?;
        tensors.push((PADDING, view));
    }

    let partial = partial_path(path);
    safetensors::serialize_to_file(tensors, Some(header), &partial).map_err(|source| {
        WriteModelFileError::Serialize {
            path: partial.clone(),
            source,
        }
    })?;
    // safetensors writes through a 0600 temporary file; a model is no secret on the machine that
    // made it, and a serving container that runs as non-root must be able to read it.
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).map_err(
        |source| WriteModelFileError::SetPermissions {
            path: partial.clone(),
            source,
        },
    )?;
    std::fs::rename(&partial, path).map_err(|source| WriteModelFileError::Rename {
        from: partial,
        to: path.to_owned(),
        source,
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    path.with_file_name(name)
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// The bytes are not a veil demo model.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// The bytes are not a well-formed safetensors file.
    #[error("not a safetensors file ({0})")]
    NotSafetensors(#[source] SafeTensorError),
    /// The header has no `veil.model` metadata entry.
    #[error(
        "its __metadata__ has no \"{METADATA_KEY}\" entry (JSON with the model name and labels); \
         write demo models with `veil-model-server demo-model`"
    )]
    MissingMetadata,
    /// The `veil.model` entry is not the expected JSON.
    #[error("its \"{METADATA_KEY}\" metadata is not JSON of the form {{\"name\": ..., \"labels\": [...]}}: {0}")]
    BadMetadata(#[source] serde_json::Error),
    /// A required tensor is absent.
    #[error("it has no tensor \"{tensor}\"; a demo model needs {LAYER1_WEIGHT}, {LAYER1_BIAS}, {LAYER2_WEIGHT} and {LAYER2_BIAS}")]
    MissingTensor {
        /// The absent tensor.
        tensor: &'static str,
    },
    /// A tensor has an element type other than F32.
    #[error("tensor \"{tensor}\" has element type {found}, expected F32")]
    WrongDtype {
        /// The tensor's name.
        tensor: &'static str,
        /// The element type found.
        found: Dtype,
    },
    /// A tensor's shape does not fit the other layers.
    #[error("tensor \"{tensor}\" has shape {found:?}, expected {expected}")]
    WrongShape {
        /// The tensor's name.
        tensor: &'static str,
        /// The shape the other tensors call for.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// The number of labels differs from the number of outputs.
    #[error("its metadata lists {labels} labels but the output layer has {outputs} outputs")]
    LabelCount {
        /// Labels in the metadata.
        labels: usize,
        /// Rows of `layer2.weight`.
        outputs: usize,
    },
}

/// Parses a whole model file held in memory.
pub fn read_model_bytes(bytes: &[u8]) -> Result<(MlpWeights, ModelMetadata), ReadModelError> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(ReadModelError::NotSafetensors)?;
    let metadata_json = header
        .metadata()
        .as_ref()
        .and_then(|entries| entries.get(METADATA_KEY))
        .ok_or(ReadModelError::MissingMetadata)?;
    let metadata: ModelMetadata =
        serde_json::from_str(metadata_json).map_err(ReadModelError::BadMetadata)?;

    let tensors = SafeTensors::deserialize(bytes).map_err(ReadModelError::NotSafetensors)?;
    let (layer1_weight, layer1_weight_shape) = f32_tensor(&tensors, LAYER1_WEIGHT)?;
    let [hidden, inputs] = matrix_shape(LAYER1_WEIGHT, &layer1_weight_shape)?;
    let (layer1_bias, layer1_bias_shape) = f32_tensor(&tensors, LAYER1_BIAS)?;
    expect_shape(LAYER1_BIAS, &layer1_bias_shape, &[hidden])?;
    let (layer2_weight, layer2_weight_shape) = f32_tensor(&tensors, LAYER2_WEIGHT)?;
    let [outputs, layer2_inputs] = matrix_shape(LAYER2_WEIGHT, &layer2_weight_shape)?;
    expect_shape(LAYER2_WEIGHT, &[outputs, layer2_inputs], &[outputs, hidden])?;
    let (layer2_bias, layer2_bias_shape) = f32_tensor(&tensors, LAYER2_BIAS)?;
    expect_shape(LAYER2_BIAS, &layer2_bias_shape, &[outputs])?;

    if metadata.labels.len() != outputs {
        return Err(ReadModelError::LabelCount {
            labels: metadata.labels.len(),
            outputs,
        });
    }
    let weights = MlpWeights {
        inputs,
        hidden,
        outputs,
        layer1_weight,
        layer1_bias,
        layer2_weight,
        layer2_bias,
    };
    Ok((weights, metadata))
}

fn f32_tensor(
    tensors: &SafeTensors<'_>,
    name: &'static str,
) -> Result<(Vec<f32>, Vec<usize>), ReadModelError> {
    let view = tensors
        .tensor(name)
        .map_err(|_| ReadModelError::MissingTensor { tensor: name })?;
    if view.dtype() != Dtype::F32 {
        return Err(ReadModelError::WrongDtype {
            tensor: name,
            found: view.dtype(),
        });
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|chunk| {
            let mut le = [0u8; 4];
            le.copy_from_slice(chunk);
            f32::from_le_bytes(le)
        })
        .collect();
    Ok((values, view.shape().to_vec()))
}

/// A weight matrix must be two-dimensional with no empty dimension.
fn matrix_shape(name: &'static str, shape: &[usize]) -> Result<[usize; 2], ReadModelError> {
    match *shape {
        [rows, columns] if rows > 0 && columns > 0 => Ok([rows, columns]),
        _ => Err(ReadModelError::WrongShape {
            tensor: name,
            expected: "[rows, columns], both non-zero".to_owned(),
            found: shape.to_vec(),
        }),
    }
}

fn expect_shape(
    name: &'static str,
    found: &[usize],
    expected: &[usize],
) -> Result<(), ReadModelError> {
    if found == expected {
        return Ok(());
    }
    Err(ReadModelError::WrongShape {
        tensor: name,
        expected: format!("{expected:?}"),
        found: found.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_weights() -> MlpWeights {
        MlpWeights {
            inputs: 2,
            hidden: 2,
            outputs: 2,
            layer1_weight: vec![1.0, 0.0, 0.0, 1.0],
            layer1_bias: vec![0.0, 0.0],
            layer2_weight: vec![1.0, 0.0, 0.0, 1.0],
            layer2_bias: vec![0.0, 0.5],
        }
    }

    fn tiny_metadata() -> ModelMetadata {
        ModelMetadata {
            name: "tiny".to_owned(),
            labels: vec!["left".to_owned(), "right".to_owned()],
            canary: Some("tiny-canary".to_owned()),
        }
    }

    #[test]
    fn written_model_reads_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_model_file(&path, &tiny_weights(), &tiny_metadata(), &[7; 100]).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let (weights, metadata) = read_model_bytes(&bytes).unwrap();
        assert_eq!(weights, tiny_weights());
        assert_eq!(metadata, tiny_metadata());
        assert_eq!(weights.parameter_count(), 12);
        assert!(!partial_path(&path).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn debug_output_hides_the_canary() {
        let shown = format!("{:?}", tiny_metadata());
        assert!(!shown.contains("tiny-canary"), "{shown}");
    }

    #[test]
    fn weights_that_do_not_match_the_sizes_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut weights = tiny_weights();
        weights.layer1_bias.push(1.0);
        let error = write_model_file(
            &dir.path().join("m.safetensors"),
            &weights,
            &tiny_metadata(),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(error, WriteModelFileError::TensorSize { tensor, .. } if tensor == LAYER1_BIAS),
            "{error}"
        );
    }

    #[test]
    fn label_count_must_match_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut metadata = tiny_metadata();
        metadata.labels.push("extra".to_owned());
        write_model_file(&path, &tiny_weights(), &metadata, &[]).unwrap();
        let error = read_model_bytes(&std::fs::read(&path).unwrap()).unwrap_err();
        assert!(
            matches!(
                error,
                ReadModelError::LabelCount {
                    labels: 3,
                    outputs: 2
                }
            ),
            "{error}"
        );
    }
}
