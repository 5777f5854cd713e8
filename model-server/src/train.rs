//! Trains the demo model on iris-like samples, so that its answers mean something: a setosa's
//! measurements come back "setosa".
//!
//! The samples are drawn around the per-species means and spreads of Fisher's iris data (1936),
//! not copied from it, so no data set ships with the code. Training uses only `+ - * /` and
//! comparisons, which IEEE 754 makes bit-exact (Rust never fuses them into FMA on its own), and a
//! squared-error loss rather than cross-entropy because `exp`/`ln` come from the C library and may
//! round differently between libraries. Together with the seeded generator this keeps the trained
//! model byte-for-byte reproducible.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::format::MlpWeights;
use crate::model::{dense, relu};

/// Mean sepal length, sepal width, petal length, petal width (cm) of setosa, versicolor and
/// virginica in Fisher's iris data.
pub const SPECIES_MEANS: [[f32; 4]; 3] = [
    [5.006, 3.428, 1.462, 0.246],
    [5.936, 2.770, 4.260, 1.326],
    [6.588, 2.974, 5.552, 2.026],
];
/// Standard deviations matching [`SPECIES_MEANS`].
const SPECIES_SPREADS: [[f32; 4]; 3] = [
    [0.352, 0.379, 0.174, 0.105],
    [0.516, 0.314, 0.470, 0.198],
    [0.636, 0.322, 0.552, 0.275],
];
/// Mean and standard deviation over all species, used to standardise inputs while training; the
/// scaling is folded into the first layer afterwards, so the served model takes raw centimetres.
const OVERALL_MEAN: [f32; 4] = [5.843, 3.057, 3.758, 1.199];
const OVERALL_SPREAD: [f32; 4] = [0.828, 0.436, 1.765, 0.762];

/// Samples drawn per species, as in the original data.
pub const SAMPLES_PER_SPECIES: usize = 50;
const EPOCHS: usize = 60;
const LEARNING_RATE: f32 = 0.01;
/// The logit the true class is trained towards (others towards 0): softmax then gives it about
/// e^4 / (e^4 + 2) = 0.96.
const TARGET_LOGIT: f32 = 4.0;

const SAMPLE_STREAM: u64 = 2;
const SHUFFLE_STREAM: u64 = 3;

/// One labelled sample: four measurements and the species index.
pub type Sample = ([f32; 4], usize);

/// `SAMPLES_PER_SPECIES` samples per species for `seed`, species by species.
pub fn iris_like_samples(seed: u64) -> Vec<Sample> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(SAMPLE_STREAM);
    let mut samples = Vec::with_capacity(SPECIES_MEANS.len() * SAMPLES_PER_SPECIES);
    for (species, (mean, spread)) in SPECIES_MEANS.iter().zip(&SPECIES_SPREADS).enumerate() {
        for _ in 0..SAMPLES_PER_SPECIES {
            let mut features = [0.0f32; 4];
            for (feature, (mean, spread)) in features.iter_mut().zip(mean.iter().zip(spread)) {
                *feature = mean + spread * unit_variance_noise(&mut rng);
            }
            samples.push((features, species));
        }
    }
    samples
}

/// The sum of three uniforms on [-1, 1): mean 0, variance exactly 1, bell-shaped, and free of the
/// `ln`/`cos` a Gaussian would need.
fn unit_variance_noise(rng: &mut ChaCha20Rng) -> f32 {
    (0..3).map(|_| 2.0 * unit_interval(rng) - 1.0).sum()
}

/// A uniform value in [0, 1): the top 24 bits fill an f32 mantissa exactly, so nothing rounds.
pub(crate) fn unit_interval(rng: &mut ChaCha20Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

/// Trains `weights` (already initialised, 4 inputs, 3 outputs) on [`iris_like_samples`] of `seed`
/// with per-sample gradient descent in a seeded order, then folds the input standardisation into
/// the first layer.
pub fn train_on_iris_like_samples(weights: &mut MlpWeights, seed: u64) {
    let samples: Vec<Sample> = iris_like_samples(seed)
        .into_iter()
        .map(|(features, species)| (standardise(&features), species))
        .collect();
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(SHUFFLE_STREAM);
    for _ in 0..EPOCHS {
        shuffle(&mut order, &mut rng);
        for &index in &order {
            let (features, species) = &samples[index];
            descend_one_sample(weights, features, *species);
        }
    }
    fold_standardisation_into_first_layer(weights);
}

fn standardise(features: &[f32; 4]) -> [f32; 4] {
    let mut scaled = [0.0f32; 4];
    for (index, value) in scaled.iter_mut().enumerate() {
        *value = (features[index] - OVERALL_MEAN[index]) / OVERALL_SPREAD[index];
    }
    scaled
}

/// Fisher-Yates; the modulo bias of `next_u32() % n` for n <= 150 is far below anything that
/// matters to training.
fn shuffle(order: &mut [usize], rng: &mut ChaCha20Rng) {
    for last in (1..order.len()).rev() {
        let pick = rng.next_u32() as usize % (last + 1);
        order.swap(last, pick);
    }
}

/// One step of gradient descent on `(z - t)^2 / 2` summed over the outputs.
fn descend_one_sample(weights: &mut MlpWeights, features: &[f32], species: usize) {
    let pre_activation = dense(&weights.layer1_weight, &weights.layer1_bias, features);
    let hidden: Vec<f32> = pre_activation.iter().map(|value| relu(*value)).collect();
    let logits = dense(&weights.layer2_weight, &weights.layer2_bias, &hidden);
    let logit_grads: Vec<f32> = logits
        .iter()
        .enumerate()
        .map(|(class, logit)| logit - target_logit(class, species))
        .collect();

    // Hidden gradients use the output weights before this step changes them.
    let hidden_count = weights.hidden;
    let hidden_grads: Vec<f32> = (0..hidden_count)
        .map(|unit| {
            if pre_activation[unit] <= 0.0 {
                return 0.0;
            }
            logit_grads
                .iter()
                .enumerate()
                .fold(0.0, |sum, (class, grad)| {
                    sum + weights.layer2_weight[class * hidden_count + unit] * grad
                })
        })
        .collect();

    step_layer(
        &mut weights.layer2_weight,
        &mut weights.layer2_bias,
        &logit_grads,
        &hidden,
    );
    step_layer(
        &mut weights.layer1_weight,
        &mut weights.layer1_bias,
        &hidden_grads,
        features,
    );
}

fn target_logit(class: usize, species: usize) -> f32 {
    if class == species {
        TARGET_LOGIT
    } else {
        0.0
    }
}

/// `weight -= lr * grad ⊗ input`, `bias -= lr * grad` for a row-major `[grads.len(), input.len()]`
/// layer.
fn step_layer(weight: &mut [f32], bias: &mut [f32], grads: &[f32], input: &[f32]) {
    for ((row, bias), grad) in weight.chunks_exact_mut(input.len()).zip(bias).zip(grads) {
        for (weight, x) in row.iter_mut().zip(input) {
            *weight -= LEARNING_RATE * grad * x;
        }
        *bias -= LEARNING_RATE * grad;
    }
}

/// Rewrites layer 1 so that it takes raw measurements: `W (x - m) / s + b` becomes
/// `(W / s) x + (b - W m / s)`.
fn fold_standardisation_into_first_layer(weights: &mut MlpWeights) {
    let inputs = weights.inputs;
    for (row, bias) in weights
        .layer1_weight
        .chunks_exact_mut(inputs)
        .zip(&mut weights.layer1_bias)
    {
        for (index, weight) in row.iter_mut().enumerate() {
            *weight /= OVERALL_SPREAD[index];
            *bias -= *weight * OVERALL_MEAN[index];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{demo_weights, DEMO_LABELS};
    use crate::model::Model;

    fn demo_model(seed: u64) -> Model {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::DemoModelOptions {
            seed,
            ..Default::default()
        };
        crate::write_demo_model(dir.path(), &options).unwrap();
        Model::load(dir.path()).unwrap()
    }

    #[test]
    fn noise_has_unit_spread() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let values: Vec<f32> = (0..20_000).map(|_| unit_variance_noise(&mut rng)).collect();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let variance =
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((variance - 1.0).abs() < 0.05, "variance {variance}");
    }

    #[test]
    fn trained_model_classifies_unseen_samples() {
        for seed in [0, 1, 2] {
            let model = demo_model(seed);
            // Other seeds' samples were never trained on.
            let unseen = iris_like_samples(seed + 1000);
            let correct = unseen
                .iter()
                .filter(|(features, species)| {
                    model.predict(features).unwrap().label == DEMO_LABELS[*species]
                })
                .count();
            // Real iris: about 97% for a small MLP; versicolor and virginica overlap a little.
            assert!(
                correct * 100 >= unseen.len() * 90,
                "seed {seed}: {correct} of {} correct",
                unseen.len()
            );
        }
    }

    #[test]
    fn first_flower_of_each_species_in_fishers_data_is_recognised() {
        let model = demo_model(0);
        let flowers = [
            ([5.1, 3.5, 1.4, 0.2], "setosa"),
            ([7.0, 3.2, 4.7, 1.4], "versicolor"),
            ([6.3, 3.3, 6.0, 2.5], "virginica"),
        ];
        for (features, species) in flowers {
            let prediction = model.predict(&features).unwrap();
            assert_eq!(prediction.label, species, "{features:?}: {prediction:?}");
        }
    }

    #[test]
    fn species_means_get_a_confident_answer() {
        let model = demo_model(0);
        for (species, mean) in SPECIES_MEANS.iter().enumerate() {
            let prediction = model.predict(mean).unwrap();
            assert_eq!(prediction.label, DEMO_LABELS[species]);
            assert!(prediction.outputs[species] > 0.8, "{prediction:?}");
        }
    }

    #[test]
    fn training_is_reproducible() {
        assert_eq!(demo_weights(5), demo_weights(5));
    }
}
