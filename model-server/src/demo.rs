//! The demo model: a 4 -> 16 (ReLU) -> 3 (softmax) iris classifier. Its weights start from a
//! seeded ChaCha20 stream and are trained on seeded iris-like samples ([`crate::train`]), so the
//! same options always give a byte-identical file.

use std::fs::File;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::format::{self, MlpWeights, ModelMetadata, WriteModelFileError};
use crate::model::MODEL_FILE_NAME;
use crate::train;

/// Input features of the demo model: sepal length, sepal width, petal length, petal width (cm).
pub const DEMO_INPUTS: usize = 4;
/// Hidden units of the demo model.
pub const DEMO_HIDDEN: usize = 16;
/// The demo model's class labels (iris species), one per output.
pub const DEMO_LABELS: [&str; 3] = ["setosa", "versicolor", "virginica"];
/// The demo model's name.
pub const DEMO_MODEL_NAME: &str = "veil-demo-mlp";
/// Largest padding `write_demo_model` accepts, so a typo cannot fill a disk or guest RAM.
pub const MAX_PAD_MIB: u32 = 4096;

const MIB: usize = 1024 * 1024;
// Separate ChaCha streams so that padding never shifts the weights.
const WEIGHT_STREAM: u64 = 0;
const PADDING_STREAM: u64 = 1;

/// How to generate a demo model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DemoModelOptions {
    /// Seed of the weight and padding generator.
    pub seed: u64,
    /// Marker text stored in the metadata; [`default_canary`] of the seed when `None`.
    pub canary: Option<String>,
    /// MiB of pseudo-random padding to add (0 for none), at most [`MAX_PAD_MIB`].
    pub pad_mib: u32,
}

impl DemoModelOptions {
    /// The canary these options write.
    pub fn effective_canary(&self) -> String {
        self.canary
            .clone()
            .unwrap_or_else(|| default_canary(self.seed))
    }
}

/// The canary written when none is given: `veil-canary-model-plaintext-<seed>`.
pub fn default_canary(seed: u64) -> String {
    format!("veil-canary-model-plaintext-{seed}")
}

/// A model file that [`write_demo_model`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenModel {
    /// `<dir>/model.safetensors`.
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the file (what a sealed-model annotation expects).
    pub sha256: String,
    /// Size of the file in bytes.
    pub size_bytes: u64,
}

/// Writing the demo model failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteDemoModelError {
    /// The padding asked for is above [`MAX_PAD_MIB`].
    #[error("--pad-mib {requested} is above the limit of {MAX_PAD_MIB} MiB")]
    PaddingTooLarge {
        /// The MiB asked for.
        requested: u32,
    },
    /// The output directory could not be created.
    #[error("cannot create output directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The model file could not be written.
    #[error(transparent)]
    Write(#[from] WriteModelFileError),
    /// The written file could not be read back to hash it.
    #[error("cannot hash the written model {path}: {source}")]
    Hash {
        /// The model file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `dir/model.safetensors` for `options`, creating `dir` if needed.
pub fn write_demo_model(
    dir: &Path,
    options: &DemoModelOptions,
) -> Result<WrittenModel, WriteDemoModelError> {
    if options.pad_mib > MAX_PAD_MIB {
        return Err(WriteDemoModelError::PaddingTooLarge {
            requested: options.pad_mib,
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| WriteDemoModelError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(MODEL_FILE_NAME);
    let padding = demo_padding(options.seed, options.pad_mib);
    format::write_model_file(
        &path,
        &demo_weights(options.seed),
        &demo_metadata(options),
        &padding,
    )?;
    let (sha256, size_bytes) =
        sha256_of_file(&path).map_err(|source| WriteDemoModelError::Hash {
            path: path.clone(),
            source,
        })?;
    Ok(WrittenModel {
        path,
        sha256,
        size_bytes,
    })
}

/// The metadata written for `options`.
pub fn demo_metadata(options: &DemoModelOptions) -> ModelMetadata {
    ModelMetadata {
        name: DEMO_MODEL_NAME.to_owned(),
        labels: DEMO_LABELS
            .iter()
            .map(|label| (*label).to_owned())
            .collect(),
        canary: Some(options.effective_canary()),
    }
}

/// The trained demo weights for `seed`.
pub fn demo_weights(seed: u64) -> MlpWeights {
    let mut weights = initial_weights(seed);
    train::train_on_iris_like_samples(&mut weights, seed);
    weights
}

/// Untrained weights: uniform in `±1/sqrt(fan_in)` (the usual initialisation range), drawn layer
/// by layer, weights before biases.
fn initial_weights(seed: u64) -> MlpWeights {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(WEIGHT_STREAM);
    let outputs = DEMO_LABELS.len();
    let layer1_weight = uniform_values(&mut rng, DEMO_HIDDEN * DEMO_INPUTS, DEMO_INPUTS);
    let layer1_bias = uniform_values(&mut rng, DEMO_HIDDEN, DEMO_INPUTS);
    let layer2_weight = uniform_values(&mut rng, outputs * DEMO_HIDDEN, DEMO_HIDDEN);
    let layer2_bias = uniform_values(&mut rng, outputs, DEMO_HIDDEN);
    MlpWeights {
        inputs: DEMO_INPUTS,
        hidden: DEMO_HIDDEN,
        outputs,
        layer1_weight,
        layer1_bias,
        layer2_weight,
        layer2_bias,
    }
}

fn uniform_values(rng: &mut ChaCha20Rng, count: usize, fan_in: usize) -> Vec<f32> {
    // fan_in is a small constant (4 or 16): the cast is exact.
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..count)
        .map(|_| bound * (2.0 * train::unit_interval(rng) - 1.0))
        .collect()
}

/// `pad_mib` MiB of ChaCha20 output: incompressible, so a benchmark moves every byte.
fn demo_padding(seed: u64, pad_mib: u32) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(PADDING_STREAM);
    // pad_mib <= MAX_PAD_MIB, so this fits in usize on every 64-bit target veil runs on.
    let mut padding = vec![0u8; pad_mib as usize * MIB];
    rng.fill_bytes(&mut padding);
    padding
}

fn sha256_of_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    fn write(dir: &Path, options: &DemoModelOptions) -> (WrittenModel, Vec<u8>) {
        let written = write_demo_model(dir, options).unwrap();
        let bytes = std::fs::read(&written.path).unwrap();
        (written, bytes)
    }

    #[test]
    fn same_options_give_identical_files() {
        let options = DemoModelOptions {
            seed: 7,
            canary: None,
            pad_mib: 1,
        };
        let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, first_bytes) = write(first_dir.path(), &options);
        let (second, second_bytes) = write(second_dir.path(), &options);
        assert_eq!(first_bytes, second_bytes);
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(first.size_bytes, first_bytes.len() as u64);
        assert_eq!(first.sha256, hex::encode(Sha256::digest(&first_bytes)));
    }

    /// Pins the generator: a change here means every sealed demo model and recorded digest changes.
    #[test]
    fn default_model_has_the_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_demo_model(dir.path(), &DemoModelOptions::default()).unwrap();
        assert_eq!(written.sha256, KNOWN_DEFAULT_SHA256);
    }

    const KNOWN_DEFAULT_SHA256: &str =
        "72cff0c7ad316eb7effb88b24893f2f73358c7890db8f2162242139f27830724";

    #[test]
    fn seeds_give_different_weights() {
        assert_ne!(demo_weights(1), demo_weights(2));
    }

    #[test]
    fn canary_is_in_the_file_and_the_default_names_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let options = DemoModelOptions {
            seed: 42,
            ..DemoModelOptions::default()
        };
        let (_, bytes) = write(dir.path(), &options);
        let canary = "veil-canary-model-plaintext-42";
        assert_eq!(options.effective_canary(), canary);
        assert!(bytes.windows(canary.len()).any(|w| w == canary.as_bytes()));
    }

    #[test]
    fn padding_is_incompressible_and_leaves_the_weights_alone() {
        let dir = tempfile::tempdir().unwrap();
        let padded = DemoModelOptions {
            pad_mib: 1,
            ..DemoModelOptions::default()
        };
        let (written, bytes) = write(dir.path(), &padded);
        assert!(written.size_bytes > MIB as u64);
        let padding = &bytes[bytes.len() - MIB..];
        let zeros = padding.iter().filter(|byte| **byte == 0).count();
        assert!(zeros < MIB / 128, "{zeros} zero bytes in 1 MiB of padding");

        let padded_model = Model::load(&written.path).unwrap();
        let plain_dir = tempfile::tempdir().unwrap();
        let plain = write_demo_model(plain_dir.path(), &DemoModelOptions::default()).unwrap();
        let plain_model = Model::load(&plain.path).unwrap();
        let inputs = [5.1, 3.5, 1.4, 0.2];
        assert_eq!(
            padded_model.predict(&inputs).unwrap(),
            plain_model.predict(&inputs).unwrap()
        );
    }

    #[test]
    fn demo_model_loads_with_its_shape() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_demo_model(dir.path(), &DemoModelOptions::default()).unwrap();
        let info = Model::load(dir.path()).unwrap().info();
        assert_eq!(info.name, DEMO_MODEL_NAME);
        assert_eq!(info.sha256, written.sha256);
        assert_eq!((info.inputs, info.outputs), (4, 3));
        assert_eq!(info.parameters, 4 * 16 + 16 + 16 * 3 + 3);
        assert_eq!(info.labels, DEMO_LABELS);
    }

    #[test]
    fn oversized_padding_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let options = DemoModelOptions {
            pad_mib: MAX_PAD_MIB + 1,
            ..DemoModelOptions::default()
        };
        let error = write_demo_model(dir.path(), &options).unwrap_err();
        assert!(
            matches!(error, WriteDemoModelError::PaddingTooLarge { .. }),
            "{error}"
        );
        assert!(!dir.path().join(MODEL_FILE_NAME).exists());
    }
}
