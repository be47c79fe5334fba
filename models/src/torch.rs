//! PyTorch's layers as [`Graph`](crate::Graph) nodes, their tensors named as a `state_dict`
//! names them (`{name}.weight`, `{name}.running_mean`): what the torchvision architectures
//! ([`crate::mobilenet_v3`], [`crate::resnet`]) are described with.

use crate::graph::{Activation, BatchNorm, Conv, Dense, GraphBuilder, Op, Pads};

/// Torch layers appended to a graph under construction; each returns its output's name.
pub(crate) trait TorchLayers {
    /// `Conv2d` `conv` (`[in, out, kernel, stride, groups]`, padding `kernel / 2`, no bias),
    /// `BatchNorm2d` `bn` with `eps`, then `act` (node `{bn}.act`).
    fn conv2d_bn(
        &mut self,
        x: &str,
        names: (&str, &str),
        shape: [usize; 5],
        eps: f64,
        act: Option<Activation>,
    ) -> String;

    /// A 1x1 `Conv2d` `name` with its bias.
    fn conv2d_1x1(&mut self, x: &str, name: &str, channels: (usize, usize)) -> String;

    /// `Linear` `name` with its bias.
    fn linear(&mut self, x: &str, name: &str, features: (usize, usize)) -> String;

    /// `function` of `x`, as node `name`.
    fn activation(&mut self, x: &str, name: String, function: Activation) -> String;
}

impl TorchLayers for GraphBuilder {
    fn conv2d_bn(
        &mut self,
        x: &str,
        (conv, bn): (&str, &str),
        [cin, cout, k, stride, groups]: [usize; 5],
        eps: f64,
        act: Option<Activation>,
    ) -> String {
        let weight = format!("{conv}.weight");
        let op = Conv {
            groups,
            ..Conv::square((cin, cout, k), stride, Pads::same(k / 2), weight, None)
        };
        let y = self.node(conv, Op::Conv(op), &[x]);
        let y = self.node(bn, Op::BatchNorm(BatchNorm::torch(bn, cout, eps)), &[&y]);
        match act {
            Some(function) => self.activation(&y, format!("{bn}.act"), function),
            None => y,
        }
    }

    fn conv2d_1x1(&mut self, x: &str, name: &str, (i, o): (usize, usize)) -> String {
        let (weight, bias) = (format!("{name}.weight"), Some(format!("{name}.bias")));
        let conv = Conv::square((i, o, 1), 1, Pads::NONE, weight, bias);
        self.node(name, Op::Conv(conv), &[x])
    }

    fn linear(&mut self, x: &str, name: &str, (i, o): (usize, usize)) -> String {
        self.node(name, Op::Dense(Dense::torch(name, i, o)), &[x])
    }

    fn activation(&mut self, x: &str, name: String, function: Activation) -> String {
        self.node(name, Op::Activation { function }, &[x])
    }
}
