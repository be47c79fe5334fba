//! Optimisers whose state goes into a checkpoint.
//!
//! candle-nn's `AdamW` keeps its moments private and its `SGD` has no momentum, so neither can
//! resume a run exactly. [`AdamW`] here is candle-nn's update rule unchanged (a test holds the
//! two to the same weights), with named, exportable moments and weight decay that can be
//! switched off per parameter (batch-norm scales and biases are usually not decayed).
//! [`Sgd`] is PyTorch's SGD with momentum, optionally Nesterov, and coupled weight decay.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
pub use candle_nn::ParamsAdamW;

use edgemm_models::Result;

/// A trainable tensor, by its weight name.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// What the training loop needs from an optimiser.
pub trait Optimiser {
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn set_learning_rate(&mut self, lr: f64);
    /// Steps taken so far.
    fn steps(&self) -> usize;
    /// The state to checkpoint, named `optim.<kind>.<param>`, and the step count.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores what [`Optimiser::state`] returned; every tensor must be present.
    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()>;
}

fn missing(name: &str) -> edgemm_models::Error {
    edgemm_models::Error::Config {
        architecture: "optimiser",
        reason: format!("checkpoint has no optimiser tensor {name:?}"),
    }
}

struct Moments {
    param: Param,
    m: Var,
    v: Var,
}

pub struct AdamW {
    params: Vec<Moments>,
    steps: usize,
    config: ParamsAdamW,
}

impl AdamW {
    pub fn new(params: Vec<Param>, config: ParamsAdamW) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|param| {
                let t = param.var.as_tensor();
                Ok(Moments {
                    m: Var::zeros(t.shape(), t.dtype(), t.device())?,
                    v: Var::zeros(t.shape(), t.dtype(), t.device())?,
                    param,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            steps: 0,
            config,
        })
    }
}

impl Optimiser for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let c = &self.config;
        let scale_m = 1.0 / (1.0 - c.beta1.powi(self.steps as i32));
        let scale_v = 1.0 / (1.0 - c.beta2.powi(self.steps as i32));
        for p in &self.params {
            let theta = &p.param.var;
            let Some(g) = grads.get(theta) else { continue };
            let m = ((p.m.as_tensor() * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((p.v.as_tensor() * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + c.eps)?)?;
            let decay = if p.param.decay {
                1.0 - c.lr * c.weight_decay
            } else {
                1.0
            };
            let next = ((theta.as_tensor() * decay)? - (update * c.lr)?)?;
            p.m.set(&m)?;
            p.v.set(&v)?;
            theta.set(&next)?;
        }
        Ok(())
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("optim.m.{}", p.param.name), p.m.as_tensor().clone()),
                    (format!("optim.v.{}", p.param.name), p.v.as_tensor().clone()),
                ]
            })
            .collect()
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for p in &self.params {
            for (kind, var) in [("m", &p.m), ("v", &p.v)] {
                let name = format!("optim.{kind}.{}", p.param.name);
                var.set(tensors.get(&name).ok_or_else(|| missing(&name))?)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// SGD with momentum as PyTorch defines it: `b = mu * b + (g + wd * w)`, then
/// `w -= lr * b` (or `lr * (g + wd * w + mu * b)` with Nesterov).
pub struct Sgd {
    params: Vec<(Param, Var)>,
    steps: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Sgd {
    pub fn new(
        params: Vec<Param>,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    ) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|p| {
                let t = p.var.as_tensor();
                let buf = Var::zeros(t.shape(), t.dtype(), t.device())?;
                Ok((p, buf))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            steps: 0,
            lr,
            momentum,
            weight_decay,
            nesterov,
        })
    }
}

impl Optimiser for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        for (p, buf) in &self.params {
            let theta = &p.var;
            let Some(g) = grads.get(theta) else { continue };
            let g = if p.decay && self.weight_decay != 0.0 {
                (g + (theta.as_tensor() * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let b = ((buf.as_tensor() * self.momentum)? + &g)?;
            let direction = if self.nesterov {
                (&g + (&b * self.momentum)?)?
            } else {
                b.clone()
            };
            buf.set(&b)?;
            theta.set(&(theta.as_tensor() - (direction * self.lr)?)?)?;
        }
        Ok(())
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(p, buf)| (format!("optim.b.{}", p.name), buf.as_tensor().clone()))
            .collect()
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (p, buf) in &self.params {
            let name = format!("optim.b.{}", p.name);
            buf.set(tensors.get(&name).ok_or_else(|| missing(&name))?)?;
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use candle_nn::Optimizer;

    /// A least-squares problem: minimise |X w - y|^2.
    fn loss(w: &Var) -> Tensor {
        let x = Tensor::new(&[[1f32, 2.], [3., -1.], [0.5, 0.25]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[1f32], [-2.], [0.75]], &Device::Cpu).unwrap();
        (x.matmul(w.as_tensor()).unwrap() - y)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    }

    fn start() -> Var {
        Var::from_tensor(&Tensor::new(&[[0.3f32], [-0.2]], &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn adamw_matches_candle_nn() {
        let config = ParamsAdamW {
            lr: 0.05,
            weight_decay: 0.1,
            ..Default::default()
        };
        let (ours, theirs) = (start(), start());
        let mut a = AdamW::new(
            vec![Param {
                name: "w".into(),
                var: ours.clone(),
                decay: true,
            }],
            config.clone(),
        )
        .unwrap();
        let mut b = candle_nn::AdamW::new(vec![theirs.clone()], config).unwrap();
        for _ in 0..20 {
            a.step(&loss(&ours).backward().unwrap()).unwrap();
            b.step(&loss(&theirs).backward().unwrap()).unwrap();
        }
        let diff = (ours.as_tensor() - theirs.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-7, "diff {diff}");
    }

    /// Stopping after 5 steps and restoring the state gives the weights of 10 straight steps.
    #[test]
    fn restored_state_resumes_exactly() {
        for kind in ["adamw", "sgd"] {
            let make = |var: &Var| -> Box<dyn Optimiser> {
                let p = vec![Param {
                    name: "w".into(),
                    var: var.clone(),
                    decay: true,
                }];
                match kind {
                    "adamw" => Box::new(AdamW::new(p, ParamsAdamW::default()).unwrap()),
                    _ => Box::new(Sgd::new(p, 0.01, 0.9, 1e-3, true).unwrap()),
                }
            };
            let straight = start();
            let mut opt = make(&straight);
            for _ in 0..10 {
                opt.step(&loss(&straight).backward().unwrap()).unwrap();
            }
            let resumed = start();
            let mut first = make(&resumed);
            for _ in 0..5 {
                first.step(&loss(&resumed).backward().unwrap()).unwrap();
            }
            let state: HashMap<String, Tensor> = first
                .state()
                .into_iter()
                .map(|(k, t)| (k, t.copy().unwrap()))
                .collect();
            let mut second = make(&resumed);
            second.load_state(&state, first.steps()).unwrap();
            for _ in 0..5 {
                second.step(&loss(&resumed).backward().unwrap()).unwrap();
            }
            assert_eq!(
                straight.as_tensor().to_vec2::<f32>().unwrap(),
                resumed.as_tensor().to_vec2::<f32>().unwrap(),
                "{kind}"
            );
        }
    }
}
