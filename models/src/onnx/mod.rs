//! ONNX import: an image classifier exported to ONNX (opset 11 and up) becomes a [`Graph`]
//! and the tensors it reads.
//!
//! The file is decoded with [prost](https://docs.rs/prost) messages written from ONNX's
//! schema ([`proto`]): prost is the protobuf implementation most Rust projects use, pure
//! Rust, and needs no `protoc` when the messages are declared with its derive. Each ONNX node
//! maps to one graph node, with a few rewrites an exporter's idioms need:
//!
//! - `Add`, `Sub`, `Mul` and `Div` by a constant (a scalar or one value per channel) become a
//!   per-channel affine, written as a batch norm with `epsilon = 0`, which the planner folds
//!   into the convolution before it; `MatMul` followed by `Add` of a constant is one dense
//!   layer with its bias;
//! - `Identity` and inference `Dropout` read their input through; `Constant` nodes are
//!   tensors like initializers;
//! - what Keras models converted by tf2onnx look like ([`InputLayout::Nhwc`]): the input is
//!   NHWC and a `Transpose` to NCHW follows it; before `Flatten` a `Transpose` takes the map
//!   back to NHWC, and the `Reshape` after it reads a shape computed from the input's batch
//!   (`Shape`, `Gather`, `Cast`, `Slice`, `Concat` along axis 0). The graph stays NCHW: both
//!   `Transpose`s become layout marks on the values, the shape arithmetic is evaluated with
//!   the batch left unknown, and the NHWC-order flatten is absorbed by permuting the rows of
//!   the dense layer that reads it, so no node moves data. Any other `Transpose`, or a node
//!   other than these reading an NHWC value, is an error.
//!
//! Anything else outside [`SUPPORTED_OPS`] and their attributes is an [`Error::Onnx`] naming
//! the node, the op and what is supported. Sizes from the file are checked against the bytes
//! that hold them before anything is allocated for them.

pub mod proto;

use std::collections::{HashMap, HashSet};

use prost::Message;

use crate::graph::{
    self, Activation, BatchNorm, Conv, Dense, DenseLayout, Graph, GraphInput, Node, Op, Pads, Pool,
    Shape,
};
use crate::{Error, Result};
use proto::{data_type, AttributeProto, NodeProto, TensorProto};

/// The ops the importer reads, for error messages and the README.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "PRelu",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "GlobalAveragePool",
    "MaxPool",
    "AveragePool",
    "Gemm",
    "MatMul",
    "Flatten",
    "Reshape",
    "Concat",
    "Pad",
    "Softmax",
    "Identity",
    "Dropout",
    "Constant",
    "Transpose",
    "Shape",
    "Gather",
    "Cast",
    "Slice",
];

/// The oldest opset the importer reads (`Clip` and `Pad` take their bounds as inputs from 11).
pub const MIN_OPSET: i64 = 11;

/// At most this many bytes of ONNX: protobuf's own 2 GiB limit.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// A model read from ONNX.
#[derive(Debug)]
pub struct Imported {
    pub graph: Graph,
    /// Every tensor the graph reads, in the order first read: name, shape, f32 values.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The model ends in a softmax: it answers probabilities, not logits.
    pub ends_in_softmax: bool,
    /// The default domain's opset the file declares.
    pub opset: i64,
    /// `producer_name producer_version` from the file (e.g. `pytorch 2.5.1`).
    pub producer: String,
    /// The layout of the file's input. The graph reads NCHW either way: an NHWC input's
    /// transpose to NCHW is folded away, so callers feed the same batch to both.
    pub input_layout: InputLayout,
    /// The names the file gives its input and output.
    pub input_name: String,
    pub output_name: String,
}

/// The layout of an ONNX file's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// `[N, 3, H, W]`, as PyTorch exports.
    Nchw,
    /// `[N, H, W, 3]`, as Keras models converted by tf2onnx take it.
    Nhwc,
}

/// How an ONNX value's elements are laid out relative to the graph value it names, when
/// not as the graph's own NCHW (or flat) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The ONNX value is the graph's map transposed to `[N, H, W, C]`.
    Nhwc,
    /// The ONNX value is a `[N, H, W, C]` map flattened in that order: the graph's flatten
    /// is in `C, H, W` order, so the dense layer reading it takes its rows permuted.
    NhwcFlat { c: usize, h: usize, w: usize },
}

fn error(reason: impl Into<String>) -> Error {
    Error::Onnx(reason.into())
}

/// Reads an ONNX file.
pub fn import_file(path: &std::path::Path) -> Result<Imported> {
    let len = std::fs::metadata(path)
        .map_err(|e| error(format!("{}: {e}", path.display())))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(error(format!(
            "{} holds {len} bytes, more than the {MAX_FILE_BYTES} an ONNX file may",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
    import(&bytes)
}

/// Reads an ONNX model from its bytes.
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Tensor};
/// use edgemm_models::graph::planner;
/// use edgemm_models::{onnx, Classifier, Isa};
///
/// // A small torchvision MobileNetV3 committed for the tests (paths are from models/).
/// let bytes = std::fs::read("tests/onnx/mobilenet_v3_small_w050_c10.onnx")?;
/// let imported = onnx::import(&bytes)?;
/// assert_eq!(imported.graph.classes()?, 10);
///
/// // Its initializers are the weights; the graph plans onto the fast kernels like any other.
/// let tensors: HashMap<String, Tensor> = imported
///     .tensors
///     .iter()
///     .map(|(name, shape, values)| {
///         Ok((name.clone(), Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)?))
///     })
///     .collect::<candle_core::Result<_>>()?;
/// let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
/// let plan = planner::plan(&imported.graph, &vb, Isa::best(), "graph")?;
/// let logits = plan.forward(&Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(logits.dims(), &[1, 10]);
///
/// assert!(onnx::import(&bytes[..bytes.len() / 2]).is_err()); // truncated: an error, no panic
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn import(bytes: &[u8]) -> Result<Imported> {
    let model = proto::ModelProto::decode(bytes)
        .map_err(|e| error(format!("not a readable ONNX model: {e}")))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .ok_or_else(|| error("the model declares no opset of the default ONNX domain"))?;
    if opset < MIN_OPSET {
        return Err(error(format!(
            "opset {opset} is older than the {MIN_OPSET} edgemm reads: re-export with opset_version >= {MIN_OPSET}"
        )));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| error("the model holds no graph"))?;
    let producer = format!("{} {}", model.producer_name, model.producer_version)
        .trim()
        .to_string();
    Importer::new(graph, opset)?.run(producer)
}

/// A value of the ONNX graph: computed by a node, or constant.
#[derive(Clone)]
enum Val {
    /// The graph value of this name, of this shape.
    Computed(String, Shape),
    Const(Constant),
    /// A shape computed from a value's shape (tf2onnx's `Reshape` targets): known
    /// dimensions, and `None` for the batch.
    Dims(Vec<Option<i64>>),
}

/// A constant tensor: its dims and values, and the name it is stored under (once stored).
#[derive(Clone)]
struct Constant {
    name: String,
    dims: Vec<usize>,
    values: Vec<f32>,
}

impl Constant {
    fn numel(&self) -> usize {
        self.values.len()
    }

    /// The value of a one-element tensor.
    fn scalar(&self) -> Option<f32> {
        (self.values.len() == 1).then(|| self.values[0])
    }
}

/// Decodes a tensor's values as f32 (integers converted exactly where they fit, which is all
/// a shape or pads tensor holds), checking its dims against the bytes that hold them.
fn tensor_values(t: &TensorProto) -> Result<Constant> {
    let name = t.name.clone();
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(error(format!(
            "tensor {name:?} is stored outside the file (external data); re-export with all tensors inside the model (torch.onnx.export does so below 2 GB)"
        )));
    }
    let mut numel: usize = 1;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| error(format!("tensor {name:?} has a negative dimension {d}")))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| error(format!("tensor {name:?} has dims {:?} too large", t.dims)))?;
        dims.push(d);
    }
    let raw = &t.raw_data;
    let width = match t.data_type {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::INT64 | data_type::DOUBLE => 8,
        data_type::FLOAT16 => 2,
        other => {
            return Err(error(format!(
                "tensor {name:?} has data type {other}; edgemm reads float, float16, double, int32 and int64 tensors"
            )))
        }
    };
    let stored = if raw.is_empty() {
        match t.data_type {
            data_type::FLOAT => t.float_data.len(),
            data_type::INT32 | data_type::FLOAT16 => t.int32_data.len(),
            data_type::INT64 => t.int64_data.len(),
            _ => t.double_data.len(),
        }
    } else {
        raw.len() / width
    };
    if stored != numel || (!raw.is_empty() && !raw.len().is_multiple_of(width)) {
        return Err(error(format!(
            "tensor {name:?} has dims {dims:?} ({numel} values) but holds {stored}"
        )));
    }
    let values: Vec<f32> = if raw.is_empty() {
        match t.data_type {
            data_type::FLOAT => t.float_data.clone(),
            data_type::INT32 => t.int32_data.iter().map(|&v| v as f32).collect(),
            data_type::FLOAT16 => t
                .int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f32())
                .collect(),
            data_type::INT64 => t.int64_data.iter().map(|&v| v as f32).collect(),
            _ => t.double_data.iter().map(|&v| v as f32).collect(),
        }
    } else {
        let chunks = raw.chunks_exact(width);
        match t.data_type {
            data_type::FLOAT => chunks
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            data_type::INT32 => chunks
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            data_type::FLOAT16 => chunks
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            data_type::INT64 => chunks
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            _ => chunks
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
        }
    };
    Ok(Constant { name, dims, values })
}

struct Importer<'a> {
    onnx: &'a proto::GraphProto,
    opset: i64,
    values: HashMap<String, Val>,
    nodes: Vec<Node>,
    /// Node index by output name, for rewrites that amend an earlier node.
    node_index: HashMap<String, usize>,
    /// How many nodes (and graph outputs) read each ONNX value.
    readers: HashMap<String, usize>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    stored: HashSet<String>,
    input: GraphInput,
    input_name: String,
    input_layout: InputLayout,
    /// ONNX values (by name) not in the graph's own layout; absent means NCHW or flat.
    layouts: HashMap<String, Layout>,
}

impl<'a> Importer<'a> {
    fn new(onnx: &'a proto::GraphProto, opset: i64) -> Result<Self> {
        let mut values = HashMap::new();
        for t in &onnx.initializer {
            values.insert(t.name.clone(), Val::Const(tensor_values(t)?));
        }
        // The one input that is not an initializer (older exporters list those as inputs).
        let inputs: Vec<&proto::ValueInfoProto> = onnx
            .input
            .iter()
            .filter(|i| !values.contains_key(&i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(error(format!(
                "the graph has {} inputs; edgemm runs image classifiers with one [N, 3, H, W] input",
                inputs.len()
            )));
        };
        let tensor = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        if let Some(t) = tensor {
            if t.elem_type != data_type::FLOAT {
                return Err(error(format!(
                    "input {:?} has element type {}; edgemm feeds float32 images",
                    input.name, t.elem_type
                )));
            }
        }
        let dims: Vec<Option<i64>> = tensor
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(proto::DimensionValue::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Channels last and not first: an NHWC input (`[N, H, W, 3]`).
        let input_layout = match dims.as_slice() {
            [_, c, _, Some(3)] if *c != Some(3) => InputLayout::Nhwc,
            _ => InputLayout::Nchw,
        };
        let size = match (dims.as_slice(), input_layout) {
            ([_, h, w, _], InputLayout::Nhwc) => match (h, w) {
                (Some(h), Some(w)) if *h > 0 && *w > 0 && *h <= 1 << 14 && *w <= 1 << 14 => {
                    Some((*h as usize, *w as usize))
                }
                _ => None,
            },
            ([_, c, h, w], _) => {
                if c.is_some_and(|c| c != 3) {
                    return Err(error(format!(
                        "input {:?} has {} channels; edgemm feeds RGB images in NCHW layout (3 channels second)",
                        input.name,
                        c.unwrap_or_default()
                    )));
                }
                match (h, w) {
                    (Some(h), Some(w)) if *h > 0 && *w > 0 && *h <= 1 << 14 && *w <= 1 << 14 => {
                        Some((*h as usize, *w as usize))
                    }
                    _ => None,
                }
            }
            ([], _) => None,
            (other, _) => {
                return Err(error(format!(
                    "input {:?} has {} dimensions; edgemm runs [N, 3, H, W] image inputs",
                    input.name,
                    other.len()
                )))
            }
        };
        let shape = Shape::Map {
            c: 3,
            h: size.map_or(graph::PROBE_SIZE.0, |s| s.0),
            w: size.map_or(graph::PROBE_SIZE.1, |s| s.1),
        };
        values.insert(input.name.clone(), Val::Computed(input.name.clone(), shape));
        let mut layouts = HashMap::new();
        if input_layout == InputLayout::Nhwc {
            layouts.insert(input.name.clone(), Layout::Nhwc);
        }
        let mut readers: HashMap<String, usize> = HashMap::new();
        for n in &onnx.node {
            for i in &n.input {
                *readers.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &onnx.output {
            *readers.entry(o.name.clone()).or_default() += 1;
        }
        Ok(Importer {
            onnx,
            opset,
            values,
            nodes: Vec::new(),
            node_index: HashMap::new(),
            readers,
            tensors: Vec::new(),
            stored: HashSet::new(),
            input: GraphInput {
                name: input.name.clone(),
                channels: 3,
                size,
            },
            input_name: input.name.clone(),
            input_layout,
            layouts,
        })
    }

    fn run(mut self, producer: String) -> Result<Imported> {
        if self.onnx.node.len() > graph::MAX_NODES {
            return Err(error(format!(
                "the graph has {} nodes, more than the {} edgemm reads",
                self.onnx.node.len(),
                graph::MAX_NODES
            )));
        }
        for node in &self.onnx.node {
            self.node(node).map_err(|e| match e {
                Error::Onnx(reason) => error(format!(
                    "node {:?} ({}): {reason}",
                    node_label(node),
                    node.op_type
                )),
                Error::Config { reason, .. } => error(format!(
                    "node {:?} ({}): {reason}",
                    node_label(node),
                    node.op_type
                )),
                other => other,
            })?;
        }
        let [output] = self.onnx.output.as_slice() else {
            return Err(error(format!(
                "the graph has {} outputs; edgemm runs classifiers with one [N, classes] output",
                self.onnx.output.len()
            )));
        };
        let output_value = match self.values.get(&output.name) {
            Some(Val::Computed(name, _)) => name.clone(),
            Some(Val::Const(_) | Val::Dims(_)) => {
                return Err(error("the graph's output is a constant"))
            }
            None => {
                return Err(error(format!(
                    "the output {:?} is computed by no node",
                    output.name
                )))
            }
        };
        let ends_in_softmax = self
            .node_index
            .get(&output_value)
            .is_some_and(|&i| matches!(self.nodes[i].op, Op::Softmax));
        let graph = Graph {
            input: self.input,
            nodes: self.nodes,
            output: output_value,
        };
        graph.validate()?;
        Ok(Imported {
            graph,
            tensors: self.tensors,
            ends_in_softmax,
            opset: self.opset,
            producer,
            input_layout: self.input_layout,
            input_name: self.input_name,
            output_name: output.name.clone(),
        })
    }

    fn get(&self, name: &str) -> Result<&Val> {
        self.values.get(name).ok_or_else(|| {
            error(format!(
                "reads {name:?}, which no earlier node or initializer defines"
            ))
        })
    }

    /// Input `k` of `node`, which must be computed by a node and in the graph's own layout.
    fn computed(&self, node: &NodeProto, k: usize) -> Result<(String, Shape)> {
        let (x, shape, layout) = self.computed_any(node, k)?;
        match layout {
            None => Ok((x, shape)),
            Some(Layout::Nhwc) => Err(error(format!(
                "input {k} is an NHWC map; edgemm reads NHWC values only through a Transpose to NCHW (perm [0, 3, 1, 2]) or a flatten into a dense layer"
            ))),
            Some(Layout::NhwcFlat { .. }) => Err(error(format!(
                "input {k} is an NHWC map flattened in that order; edgemm reads it only as the input of a dense layer (MatMul or Gemm)"
            ))),
        }
    }

    /// Input `k` of `node`, computed by a node, with its layout (`None`: the graph's own).
    fn computed_any(&self, node: &NodeProto, k: usize) -> Result<(String, Shape, Option<Layout>)> {
        let onnx_name = input_name(node, k)?;
        match self.get(onnx_name)? {
            Val::Computed(name, shape) => {
                Ok((name.clone(), *shape, self.layouts.get(onnx_name).copied()))
            }
            Val::Dims(_) => Err(error(format!(
                "input {k} is a shape where edgemm expects a computed value"
            ))),
            Val::Const(_) => Err(error(format!(
                "input {k} is a constant where edgemm expects a computed value"
            ))),
        }
    }

    /// Input `k` of `node`, which must be a constant.
    fn constant(&self, node: &NodeProto, k: usize) -> Result<Constant> {
        match self.get(input_name(node, k)?)? {
            Val::Const(c) => Ok(c.clone()),
            Val::Computed(..) | Val::Dims(_) => Err(error(format!(
                "input {k} is computed where edgemm needs a constant (an initializer)"
            ))),
        }
    }

    /// Input `k` if the node has it (ONNX marks a skipped optional input with "").
    fn optional_constant(&self, node: &NodeProto, k: usize) -> Result<Option<Constant>> {
        match node.input.get(k) {
            Some(name) if !name.is_empty() => self.constant(node, k).map(Some),
            _ => Ok(None),
        }
    }

    /// Stores `c` (reshaped to `dims`) for the weights file, under its own name when it is
    /// stored with that shape, else under `fallback`; returns the name.
    fn store(&mut self, c: &Constant, dims: Vec<usize>, fallback: String) -> Result<String> {
        let name = if !c.name.is_empty() && c.dims == dims {
            c.name.clone()
        } else {
            fallback
        };
        if self.stored.insert(name.clone()) {
            self.tensors.push((name.clone(), dims, c.values.clone()));
        } else if let Some((_, d, _)) = self.tensors.iter().find(|(n, ..)| *n == name) {
            if *d != dims {
                return Err(error(format!(
                    "tensor {name:?} is read as {dims:?} and as {d:?}"
                )));
            }
        }
        Ok(name)
    }

    /// A synthesised tensor (an affine's scale, a reshaped bias).
    fn store_new(&mut self, name: String, values: Vec<f32>) -> Result<String> {
        if !self.stored.insert(name.clone()) || self.values.contains_key(&name) {
            return Err(error(format!(
                "cannot name a derived tensor {name:?}: the name is taken"
            )));
        }
        self.tensors
            .push((name.clone(), vec![values.len()], values));
        Ok(name)
    }

    /// Appends a graph node named after the ONNX node's first output.
    fn push(&mut self, node: &NodeProto, op: Op, inputs: Vec<String>) -> Result<()> {
        let name = output_name(node)?.to_string();
        let shapes: Vec<Shape> = inputs
            .iter()
            .map(|i| {
                match self
                    .values
                    .values()
                    .find(|v| matches!(v, Val::Computed(n, _) if n == i))
                {
                    Some(Val::Computed(_, s)) => Ok(*s),
                    _ => Err(error(format!("reads {i:?}, which is not computed"))),
                }
            })
            .collect::<Result<_>>()?;
        let shape = graph::infer(&op, &shapes).map_err(error)?;
        if self.node_index.contains_key(&name) || name == self.input.name {
            return Err(error(format!("output {name:?} is defined twice")));
        }
        self.node_index.insert(name.clone(), self.nodes.len());
        self.nodes.push(Node {
            name: name.clone(),
            inputs,
            op,
        });
        self.values.insert(name.clone(), Val::Computed(name, shape));
        Ok(())
    }

    /// Makes the node's output another name for `value`.
    fn alias(&mut self, node: &NodeProto, value: Val) -> Result<()> {
        self.values.insert(output_name(node)?.to_string(), value);
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(error(format!(
                "domain {:?} is not ONNX's own; edgemm reads the default domain's ops",
                node.domain
            )));
        }
        // A second output (MaxPool's indices, Dropout's mask) must go unread.
        let read = |o: &String| !o.is_empty() && self.readers.get(o).is_some_and(|&n| n > 0);
        if node.output.iter().skip(1).any(read) {
            return Err(error("only the first output of a node may be used"));
        }
        let attrs = Attributes::new(node)?;
        match node.op_type.as_str() {
            "Constant" => {
                attrs.only(&[
                    "value",
                    "value_float",
                    "value_floats",
                    "value_int",
                    "value_ints",
                ])?;
                let mut c = if let Some(t) = attrs.tensor("value") {
                    tensor_values(t)?
                } else if let Some(f) = attrs.get("value_float") {
                    Constant {
                        name: String::new(),
                        dims: vec![],
                        values: vec![f.f],
                    }
                } else if let Some(a) = attrs.get("value_floats") {
                    Constant {
                        name: String::new(),
                        dims: vec![a.floats.len()],
                        values: a.floats.clone(),
                    }
                } else if let Some(a) = attrs.get("value_int") {
                    Constant {
                        name: String::new(),
                        dims: vec![],
                        values: vec![a.i as f32],
                    }
                } else if let Some(a) = attrs.get("value_ints") {
                    Constant {
                        name: String::new(),
                        dims: vec![a.ints.len()],
                        values: a.ints.iter().map(|&v| v as f32).collect(),
                    }
                } else {
                    return Err(error("a Constant without a value"));
                };
                c.name = output_name(node)?.to_string();
                self.alias(node, Val::Const(c))
            }
            "Identity" | "Dropout" => {
                attrs.only(&["seed", "ratio"])?;
                let from = input_name(node, 0)?;
                let v = self.get(from)?.clone();
                if let Some(&layout) = self.layouts.get(from) {
                    self.layouts.insert(output_name(node)?.to_string(), layout);
                }
                self.alias(node, v)
            }
            "Transpose" => self.transpose(node, &attrs),
            "Shape" | "Gather" | "Cast" | "Slice" => self.shape_arithmetic(node, &attrs),
            "Conv" => self.conv(node, &attrs),
            "BatchNormalization" => {
                attrs.only(&["epsilon", "momentum", "training_mode", "spatial"])?;
                if attrs.int("training_mode", 0) != 0 {
                    return Err(error("training_mode = 1; export the model in eval mode"));
                }
                let (x, shape) = self.computed(node, 0)?;
                let channels = shape.channels();
                let mut names = Vec::with_capacity(4);
                for (k, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "var")] {
                    let c = self.constant(node, k)?;
                    if c.numel() != channels {
                        return Err(error(format!(
                            "{what} holds {} values for {channels} channels",
                            c.numel()
                        )));
                    }
                    let out = output_name(node)?;
                    names.push(self.store(&c, vec![channels], format!("{out}.{what}"))?);
                }
                let epsilon = f64::from(attrs.float("epsilon", 1e-5));
                let bn = BatchNorm {
                    channels,
                    epsilon,
                    scale: names[0].clone(),
                    bias: names[1].clone(),
                    mean: names[2].clone(),
                    var: names[3].clone(),
                };
                self.push(node, Op::BatchNorm(bn), vec![x])
            }
            "Relu" | "Sigmoid" | "Tanh" | "HardSwish" => {
                attrs.only(&[])?;
                let function = match node.op_type.as_str() {
                    "Relu" => Activation::Relu,
                    "Sigmoid" => Activation::Sigmoid,
                    "Tanh" => Activation::Tanh,
                    _ => Activation::HardSwish,
                };
                self.activation(node, function)
            }
            "HardSigmoid" => {
                attrs.only(&["alpha", "beta"])?;
                let function = Activation::HardSigmoid {
                    alpha: attrs.float("alpha", 0.2),
                    beta: attrs.float("beta", 0.5),
                };
                self.activation(node, function)
            }
            "LeakyRelu" => {
                attrs.only(&["alpha"])?;
                let alpha = attrs.float("alpha", 0.01);
                self.activation(node, Activation::LeakyRelu { alpha })
            }
            "Clip" => {
                attrs.only(&["min", "max"])?;
                let bound = |k: usize, attr: &str, default: f32| -> Result<f32> {
                    match self.optional_constant(node, k)? {
                        Some(c) => c
                            .scalar()
                            .ok_or_else(|| error(format!("input {k} is not a scalar"))),
                        None => Ok(attrs.get(attr).map_or(default, |a| a.f)),
                    }
                };
                let (min, max) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
                let function = if min == 0.0 && max == f32::MAX {
                    Activation::Relu
                } else {
                    Activation::Clip { min, max }
                };
                self.activation(node, function)
            }
            "PRelu" => {
                attrs.only(&[])?;
                let (x, shape) = self.computed(node, 0)?;
                let slope = self.constant(node, 1)?;
                let channels = slope.numel();
                let per_channel = slope.dims.iter().filter(|&&d| d != 1).count() <= 1;
                if !per_channel || (channels != 1 && channels != shape.channels()) {
                    return Err(error(format!(
                        "slope of dims {:?}: edgemm reads one slope, or one per channel",
                        slope.dims
                    )));
                }
                let out = output_name(node)?;
                let slope = self.store(&slope, vec![channels], format!("{out}.slope"))?;
                self.push(node, Op::Prelu { channels, slope }, vec![x])
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(node, &attrs),
            "GlobalAveragePool" => {
                attrs.only(&[])?;
                let (x, _) = self.computed(node, 0)?;
                self.push(node, Op::GlobalAvgPool, vec![x])
            }
            "MaxPool" | "AveragePool" => self.pool(node, &attrs),
            "Gemm" => self.gemm(node, &attrs),
            "MatMul" => {
                attrs.only(&[])?;
                let (x, order) = self.dense_input(node)?;
                let mut w = self.constant(node, 1)?;
                let [inputs, outputs] = w.dims[..] else {
                    return Err(error(format!(
                        "multiplies by a {:?} tensor; edgemm reads [in, out] weights",
                        w.dims
                    )));
                };
                if let Some(chw) = order {
                    w = rows_to_nchw(&w, chw, DenseLayout::InOut)?;
                }
                let out = output_name(node)?;
                let weight = self.store(&w, vec![inputs, outputs], format!("{out}.weight"))?;
                let dense = Dense {
                    in_features: inputs,
                    out_features: outputs,
                    weight,
                    layout: DenseLayout::InOut,
                    bias: None,
                };
                self.push(node, Op::Dense(dense), vec![x])
            }
            "Flatten" => {
                attrs.only(&["axis"])?;
                if attrs.int("axis", 1) != 1 {
                    return Err(error(
                        "axis other than 1; edgemm flattens [N, ...] to [N, features]",
                    ));
                }
                self.flatten(node)
            }
            "Reshape" => {
                attrs.only(&["allowzero"])?;
                let (_, shape, _) = self.computed_any(node, 0)?;
                // [N, F] with N unknown (computed from the batch), 0 (copied), -1 or 1.
                let target: Vec<Option<i64>> = match self.get(input_name(node, 1)?)? {
                    Val::Dims(d) => d.clone(),
                    _ => self
                        .constant(node, 1)?
                        .values
                        .iter()
                        .map(|&v| Some(v as i64))
                        .collect(),
                };
                let flat = match target[..] {
                    [n, Some(f)] => {
                        matches!(n, None | Some(-1..=1)) && (f == -1 || f == shape.numel() as i64)
                    }
                    _ => false,
                };
                if !flat {
                    let shown: Vec<String> = target
                        .iter()
                        .map(|d| d.map_or("batch".to_string(), |d| d.to_string()))
                        .collect();
                    return Err(error(format!(
                        "to shape [{}]: edgemm reshapes only [N, ...] to [N, features]",
                        shown.join(", ")
                    )));
                }
                self.flatten(node)
            }
            "Concat" => {
                attrs.only(&["axis"])?;
                let axis = attrs.int("axis", 1);
                let is_shape = |k: usize| {
                    matches!(
                        input_name(node, k).and_then(|n| self.get(n)),
                        Ok(Val::Dims(_) | Val::Const(_))
                    )
                };
                if axis == 0 && (0..node.input.len()).all(is_shape) {
                    return self.shape_arithmetic(node, &attrs);
                }
                if axis != 1 && axis != -3 {
                    return Err(error(format!(
                        "axis {axis}: edgemm joins maps along channels (axis 1)"
                    )));
                }
                let inputs = (0..node.input.len())
                    .map(|k| self.computed(node, k).map(|(n, _)| n))
                    .collect::<Result<Vec<_>>>()?;
                self.push(node, Op::Concat, inputs)
            }
            "Pad" => {
                attrs.only(&["mode", "pads", "value"])?;
                let mode = attrs.string("mode").unwrap_or("constant");
                if mode != "constant" {
                    return Err(error(format!("mode {mode:?}: edgemm pads with a constant")));
                }
                let (x, _) = self.computed(node, 0)?;
                let pads: Vec<f32> = match self.optional_constant(node, 1)? {
                    Some(c) => c.values,
                    None => attrs.ints("pads").iter().map(|&v| v as f32).collect(),
                };
                let value = match self.optional_constant(node, 2)? {
                    Some(c) => c
                        .scalar()
                        .ok_or_else(|| error("constant_value is not a scalar"))?,
                    None => attrs.float("value", 0.0),
                };
                let [n0, c0, t, l, n1, c1, b, r] = pads[..] else {
                    return Err(error(format!(
                        "pads {pads:?}: edgemm pads 4-D maps (8 values)"
                    )));
                };
                if [n0, c0, n1, c1].iter().any(|&p| p != 0.0)
                    || [t, l, b, r]
                        .iter()
                        .any(|&p| p < 0.0 || p > graph::MAX_DIM as f32)
                {
                    return Err(error(format!(
                        "pads {pads:?}: edgemm pads rows and columns by 0..={} only",
                        graph::MAX_DIM
                    )));
                }
                let pads = [t as usize, l as usize, b as usize, r as usize];
                self.push(node, Op::Pad { pads, value }, vec![x])
            }
            "Softmax" => {
                attrs.only(&["axis"])?;
                let (x, shape) = self.computed(node, 0)?;
                let axis = attrs.int("axis", if self.opset >= 13 { -1 } else { 1 });
                if !(axis == 1 || (axis == -1 && matches!(shape, Shape::Flat(_)))) {
                    return Err(error(format!(
                        "axis {axis}: edgemm takes the softmax over the features of [N, F]"
                    )));
                }
                self.push(node, Op::Softmax, vec![x])
            }
            other => Err(error(format!(
                "op {other:?} is not supported; edgemm reads {}",
                SUPPORTED_OPS.join(", ")
            ))),
        }
    }

    /// `Flatten`, or a `Reshape` to `[N, features]`: one flatten node. An NHWC map flattens
    /// in H, W, C order; the graph flattens in C, H, W order and marks the value so that the
    /// dense layer reading it permutes its rows to match.
    fn flatten(&mut self, node: &NodeProto) -> Result<()> {
        let (x, shape, layout) = self.computed_any(node, 0)?;
        let order = match (layout, shape) {
            (None, _) => None,
            (Some(Layout::Nhwc), Shape::Map { c, h, w }) => Some(Layout::NhwcFlat { c, h, w }),
            (Some(layout), _) => {
                return Err(error(format!(
                "flattens a {shape} value in {layout:?} layout; edgemm flattens NCHW and NHWC maps"
            )))
            }
        };
        self.push(node, Op::Flatten, vec![x])?;
        if let Some(order) = order {
            self.layouts.insert(output_name(node)?.to_string(), order);
        }
        Ok(())
    }

    /// The input of a dense layer: the graph value, and the `(c, h, w)` of the map it was
    /// flattened from when that was in NHWC order.
    fn dense_input(&self, node: &NodeProto) -> Result<(String, Option<[usize; 3]>)> {
        let (x, shape, layout) = self.computed_any(node, 0)?;
        match layout {
            None => Ok((x, None)),
            Some(Layout::NhwcFlat { c, h, w }) => Ok((x, Some([c, h, w]))),
            Some(Layout::Nhwc) => Err(error(format!(
                "multiplies a {shape} map in NHWC layout; edgemm multiplies flat features"
            ))),
        }
    }

    /// The two `Transpose`s a Keras model converted by tf2onnx holds (see the module doc):
    /// NHWC to NCHW (`perm [0, 3, 1, 2]`) of a value in NHWC layout, and NCHW to NHWC
    /// (`[0, 2, 3, 1]`) of a map. Neither moves data: the output names the same graph value
    /// in the other layout.
    fn transpose(&mut self, node: &NodeProto, attrs: &Attributes) -> Result<()> {
        attrs.only(&["perm"])?;
        let (x, shape, layout) = self.computed_any(node, 0)?;
        let perm = attrs.ints("perm");
        let out = output_name(node)?.to_string();
        let to = match (&perm[..], layout, shape) {
            ([0, 3, 1, 2], Some(Layout::Nhwc), _) => None,
            ([0, 2, 3, 1], None, Shape::Map { .. }) => Some(Layout::Nhwc),
            _ => {
                let from = match layout {
                    None => "NCHW or flat".to_string(),
                    Some(l) => format!("{l:?}"),
                };
                return Err(error(format!(
                    "perm {perm:?} of a {shape} value in {from} layout; edgemm reads Transpose only from NHWC to NCHW (perm [0, 3, 1, 2], after an NHWC input) and from NCHW to NHWC (perm [0, 2, 3, 1], before a flatten)"
                )));
            }
        };
        let v = Val::Computed(x, shape);
        match to {
            Some(layout) => self.layouts.insert(out, layout),
            None => self.layouts.remove(&out),
        };
        self.alias(node, v)
    }

    /// The shape arithmetic before tf2onnx's flatten `Reshape`: `Shape` of a computed
    /// value (its ONNX dims, batch unknown), `Gather` of constant indices, `Cast` between
    /// integer types, `Slice` with step 1 and `Concat` along axis 0, over one-dimensional
    /// shapes and constants.
    fn shape_arithmetic(&mut self, node: &NodeProto, attrs: &Attributes) -> Result<()> {
        let dims_of = |k: usize| -> Result<Vec<Option<i64>>> {
            match self.get(input_name(node, k)?)? {
                Val::Dims(d) => Ok(d.clone()),
                Val::Const(c) if c.dims.len() <= 1 => {
                    Ok(c.values.iter().map(|&v| Some(v as i64)).collect())
                }
                Val::Const(c) => Err(error(format!(
                    "input {k} is a constant of dims {:?}; edgemm evaluates one-dimensional shapes",
                    c.dims
                ))),
                Val::Computed(..) => Err(error(format!(
                    "input {k} is computed where edgemm expects a shape or a constant"
                ))),
            }
        };
        let ints = |k: usize| -> Result<Vec<i64>> {
            let c = self.constant(node, k)?;
            Ok(c.values.iter().map(|&v| v as i64).collect())
        };
        let dims = match node.op_type.as_str() {
            "Shape" => {
                attrs.only(&[])?;
                let (_, shape, layout) = self.computed_any(node, 0)?;
                let known: Vec<usize> = match (shape, layout) {
                    (Shape::Map { c, h, w }, None) => vec![c, h, w],
                    (Shape::Map { c, h, w }, Some(Layout::Nhwc)) => vec![h, w, c],
                    _ => vec![shape.numel()],
                };
                std::iter::once(None)
                    .chain(known.into_iter().map(|d| Some(d as i64)))
                    .collect()
            }
            "Gather" => {
                attrs.only(&["axis"])?;
                if attrs.int("axis", 0) != 0 {
                    return Err(error("axis other than 0 on a shape"));
                }
                let data = dims_of(0)?;
                ints(1)?
                    .into_iter()
                    .map(|i| {
                        let at = if i < 0 { i + data.len() as i64 } else { i };
                        usize::try_from(at)
                            .ok()
                            .and_then(|at| data.get(at).copied())
                            .ok_or_else(|| {
                                error(format!("index {i} outside a shape of {}", data.len()))
                            })
                    })
                    .collect::<Result<_>>()?
            }
            "Cast" => {
                attrs.only(&["to"])?;
                let to = attrs.int("to", 0) as i32;
                if let Val::Computed(..) = self.get(input_name(node, 0)?)? {
                    if to != data_type::FLOAT {
                        return Err(error(format!(
                            "to data type {to}: edgemm computes float32 values"
                        )));
                    }
                    let (x, _, _) = self.computed_any(node, 0)?;
                    let v = self.get(&x)?.clone();
                    return self.alias(node, v);
                }
                if to != data_type::INT32 && to != data_type::INT64 {
                    return Err(error(format!(
                        "to data type {to} on a shape; edgemm casts shapes between int32 and int64"
                    )));
                }
                dims_of(0)?
            }
            "Slice" => {
                attrs.only(&[])?;
                let data = dims_of(0)?;
                let (starts, ends) = (ints(1)?, ints(2)?);
                let axes = match self.optional_constant(node, 3)? {
                    Some(c) => c.values.iter().map(|&v| v as i64).collect(),
                    None => vec![0],
                };
                let steps = match self.optional_constant(node, 4)? {
                    Some(c) => c.values.iter().map(|&v| v as i64).collect(),
                    None => vec![1],
                };
                let ([start], [end], [0 | -1], [1]) =
                    (&starts[..], &ends[..], &axes[..], &steps[..])
                else {
                    return Err(error(format!(
                        "starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?}: edgemm slices one-dimensional shapes with step 1"
                    )));
                };
                let len = data.len() as i64;
                let clamp = |i: i64| (if i < 0 { i + len } else { i }).clamp(0, len) as usize;
                let (start, end) = (clamp(*start), clamp(*end));
                data[start..end.max(start)].to_vec()
            }
            _ => {
                // Concat along axis 0, checked by the caller.
                let mut joined = Vec::new();
                for k in 0..node.input.len() {
                    joined.extend(dims_of(k)?);
                }
                joined
            }
        };
        self.alias(node, Val::Dims(dims))
    }

    fn activation(&mut self, node: &NodeProto, function: Activation) -> Result<()> {
        let (x, _) = self.computed(node, 0)?;
        self.push(node, Op::Activation { function }, vec![x])
    }

    fn conv(&mut self, node: &NodeProto, attrs: &Attributes) -> Result<()> {
        attrs.only(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let (x, _) = self.computed(node, 0)?;
        let w = self.constant(node, 1)?;
        let [out_channels, per_group, kh, kw] = w.dims[..] else {
            return Err(error(format!(
                "weight of dims {:?}: edgemm runs 2-D convolutions ([out, in / groups, kh, kw])",
                w.dims
            )));
        };
        let groups = positive(attrs.int("group", 1), "group")?;
        let kernel = pair(attrs, "kernel_shape", [kh as i64, kw as i64])?;
        if kernel != [kh, kw] {
            return Err(error(format!(
                "kernel_shape {kernel:?} differs from the weight's {:?}",
                [kh, kw]
            )));
        }
        let stride = pair(attrs, "strides", [1, 1])?;
        let dilation = pair(attrs, "dilations", [1, 1])?;
        let pads = match attrs.string("auto_pad").unwrap_or("NOTSET") {
            "NOTSET" => Pads::Explicit(pads4(attrs)?),
            "VALID" => Pads::NONE,
            "SAME_UPPER" => Pads::SameUpper,
            other => {
                return Err(error(format!(
                    "auto_pad {other:?}: edgemm reads NOTSET (explicit pads), VALID and SAME_UPPER"
                )))
            }
        };
        let out = output_name(node)?.to_string();
        let weight = self.store(&w, w.dims.clone(), format!("{out}.weight"))?;
        let bias = match self.optional_constant(node, 2)? {
            Some(b) if b.numel() == out_channels => {
                Some(self.store(&b, vec![out_channels], format!("{out}.bias"))?)
            }
            Some(b) => {
                return Err(error(format!(
                    "bias holds {} values for {out_channels} channels",
                    b.numel()
                )))
            }
            None => None,
        };
        let conv = Conv {
            in_channels: per_group
                .checked_mul(groups)
                .ok_or_else(|| error("group too large"))?,
            out_channels,
            kernel,
            stride,
            pads,
            dilation,
            groups,
            weight,
            bias,
        };
        self.push(node, Op::Conv(conv), vec![x])
    }

    fn pool(&mut self, node: &NodeProto, attrs: &Attributes) -> Result<()> {
        let max = node.op_type == "MaxPool";
        if max {
            attrs.only(&[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ])?;
        } else {
            attrs.only(&[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "kernel_shape",
                "pads",
                "strides",
            ])?;
        }
        let (x, _) = self.computed(node, 0)?;
        if !attrs.has("kernel_shape") {
            return Err(error("no kernel_shape"));
        }
        let kernel = pair(attrs, "kernel_shape", [1, 1])?;
        if pair(attrs, "dilations", [1, 1])? != [1, 1] {
            return Err(error("dilations other than 1"));
        }
        let pads = match attrs.string("auto_pad").unwrap_or("NOTSET") {
            "NOTSET" => pads4(attrs)?,
            "VALID" => [0; 4],
            other => {
                return Err(error(format!(
                    "auto_pad {other:?}: edgemm reads NOTSET and VALID for pools"
                )))
            }
        };
        let pool = Pool {
            kernel,
            stride: pair(attrs, "strides", [1, 1])?,
            pads,
            ceil_mode: attrs.int("ceil_mode", 0) != 0,
            count_include_pad: attrs.int("count_include_pad", 0) != 0,
        };
        let op = if max {
            Op::MaxPool(pool)
        } else {
            Op::AvgPool(pool)
        };
        self.push(node, op, vec![x])
    }

    fn gemm(&mut self, node: &NodeProto, attrs: &Attributes) -> Result<()> {
        attrs.only(&["alpha", "beta", "transA", "transB"])?;
        if attrs.int("transA", 0) != 0 {
            return Err(error("transA = 1: edgemm multiplies [N, in] features"));
        }
        let (x, order) = self.dense_input(node)?;
        let mut w = self.constant(node, 1)?;
        let [a, b] = w.dims[..] else {
            return Err(error(format!("B of dims {:?} is not a matrix", w.dims)));
        };
        let layout = if attrs.int("transB", 0) != 0 {
            DenseLayout::OutIn
        } else {
            DenseLayout::InOut
        };
        if let Some(chw) = order {
            w = rows_to_nchw(&w, chw, layout)?;
        }
        let (inputs, outputs) = match layout {
            DenseLayout::OutIn => (b, a),
            DenseLayout::InOut => (a, b),
        };
        let out = output_name(node)?.to_string();
        let alpha = attrs.float("alpha", 1.0);
        let weight = if alpha == 1.0 {
            self.store(&w, vec![a, b], format!("{out}.weight"))?
        } else {
            w.values.iter_mut().for_each(|v| *v *= alpha);
            w.name = String::new();
            self.store(&w, vec![a, b], format!("{out}.weight"))?
        };
        let bias = match self.optional_constant(node, 2)? {
            Some(mut c) if c.numel() == outputs => {
                let beta = attrs.float("beta", 1.0);
                if beta != 1.0 {
                    c.values.iter_mut().for_each(|v| *v *= beta);
                    c.name = String::new();
                }
                Some(self.store(&c, vec![outputs], format!("{out}.bias"))?)
            }
            Some(c) if c.numel() == 1 => {
                let beta = attrs.float("beta", 1.0);
                let v = c.values[0] * beta;
                Some(self.store_new(format!("{out}.bias"), vec![v; outputs])?)
            }
            Some(c) => {
                return Err(error(format!(
                    "C of dims {:?} for {outputs} outputs",
                    c.dims
                )))
            }
            None => None,
        };
        let dense = Dense {
            in_features: inputs,
            out_features: outputs,
            weight,
            layout,
            bias,
        };
        self.push(node, Op::Dense(dense), vec![x])
    }

    /// `Add`, `Sub`, `Mul`, `Div` of two computed values or of a value and a constant.
    fn arithmetic(&mut self, node: &NodeProto, attrs: &Attributes) -> Result<()> {
        attrs.only(&[])?;
        let op = node.op_type.as_str();
        for k in 0..2 {
            if let Some(layout) = self.layouts.get(input_name(node, k)?) {
                return Err(error(format!(
                    "input {k} is in {layout:?} layout; edgemm applies {op} to NCHW maps and flat features"
                )));
            }
        }
        let a = self.get(input_name(node, 0)?)?.clone();
        let b = self.get(input_name(node, 1)?)?.clone();
        if let (Val::Computed(x, _), Val::Computed(y, _), "Mul") = (&a, &b, op) {
            for (value, gate) in [(x, y), (y, x)] {
                if self.fuse_hard_swish(value, gate) {
                    let v = self.get(gate)?.clone();
                    return self.alias(node, v);
                }
            }
        }
        match (a, b) {
            (Val::Computed(x, _), Val::Computed(y, _)) => match op {
                "Add" => self.push(node, Op::Add, vec![x, y]),
                "Mul" => self.push(node, Op::Mul, vec![x, y]),
                _ => Err(error(format!(
                    "{op} of two computed values; edgemm computes Add and Mul of two values, and {op} by a constant"
                ))),
            },
            (Val::Computed(x, shape), Val::Const(c)) => self.affine(node, op, (x, shape), c, false),
            (Val::Const(c), Val::Computed(x, shape)) => self.affine(node, op, (x, shape), c, true),
            (Val::Const(_), Val::Const(_)) => Err(error(
                "arithmetic on two constants (fold constants before exporting, e.g. onnx-simplifier)",
            )),
            (Val::Dims(_), _) | (_, Val::Dims(_)) => Err(error(format!(
                "{op} on a shape; edgemm evaluates shapes through Shape, Gather, Cast, Slice and Concat only"
            ))),
        }
    }

    /// Whether `gate` is `HardSigmoid(x)` with hard-swish's constants, read by one node only:
    /// then `x * gate` is hard-swish, which PyTorch exports so below opset 14. The gate's node
    /// becomes a hard-swish (one pass over the map instead of two) when this returns true.
    fn fuse_hard_swish(&mut self, x: &str, gate: &str) -> bool {
        let Some(&i) = self.node_index.get(gate) else {
            return false;
        };
        let is_gate = match self.nodes[i].op {
            Op::Activation {
                function: Activation::HardSigmoid { alpha, beta },
            } => (alpha - 1.0 / 6.0).abs() < 1e-6 && beta == 0.5,
            _ => false,
        };
        if !is_gate || self.nodes[i].inputs != [x] || self.readers.get(gate).copied() != Some(1) {
            return false;
        }
        self.nodes[i].op = Op::Activation {
            function: Activation::HardSwish,
        };
        true
    }

    /// `x op c` (or `c op x` when `reversed`) for a constant scalar or per-channel `c`.
    fn affine(
        &mut self,
        node: &NodeProto,
        op: &str,
        (x, shape): (String, Shape),
        c: Constant,
        reversed: bool,
    ) -> Result<()> {
        let channels = shape.channels();
        // The constant must broadcast over channels only: a scalar, [C], [C, 1, 1] or
        // [1, C, 1, 1] on a map; [F] or [1, F] on flat features.
        let non_unit: Vec<usize> = c.dims.iter().copied().filter(|&d| d != 1).collect();
        let per_channel = match shape {
            Shape::Map { .. } => {
                let tail_ones =
                    c.dims.len() < 3 || c.dims[c.dims.len() - 2..].iter().all(|&d| d == 1);
                non_unit.len() <= 1
                    && (c.numel() == 1
                        || (c.numel() == channels && (c.dims.len() == 1 || tail_ones)))
            }
            Shape::Flat(_) => non_unit.len() <= 1 && (c.numel() == 1 || c.numel() == channels),
        };
        if !per_channel {
            return Err(error(format!(
                "{op} by a constant of dims {:?} on a {shape} value; edgemm reads a scalar or one value per channel",
                c.dims
            )));
        }
        let value = |i: usize| {
            if c.numel() == 1 {
                c.values[0]
            } else {
                c.values[i]
            }
        };
        // MatMul + Add of its bias: one dense layer.
        if op == "Add" {
            if let Some(&i) = self.node_index.get(&x) {
                let sole = self.readers.get(&x).copied() == Some(1);
                if let Op::Dense(d) = &self.nodes[i].op {
                    if d.bias.is_none() && sole && d.out_features == channels {
                        let out = output_name(node)?.to_string();
                        let bias = self
                            .store_new(format!("{out}.bias"), (0..channels).map(value).collect())?;
                        if let Op::Dense(d) = &mut self.nodes[i].op {
                            d.bias = Some(bias);
                        }
                        let v = self.get(&x)?.clone();
                        return self.alias(node, v);
                    }
                }
            }
        }
        let (scale, shift): (Vec<f32>, Vec<f32>) = (0..channels)
            .map(|i| {
                let v = value(i);
                match (op, reversed) {
                    ("Add", _) => Ok((1.0, v)),
                    ("Sub", false) => Ok((1.0, -v)),
                    ("Sub", true) => Ok((-1.0, v)),
                    ("Mul", _) => Ok((v, 0.0)),
                    ("Div", false) if v != 0.0 => Ok((1.0 / v, 0.0)),
                    ("Div", false) => Err(error("division by a constant zero")),
                    _ => Err(error("a constant divided by a computed value")),
                }
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let out = output_name(node)?.to_string();
        let bn = BatchNorm {
            channels,
            epsilon: 0.0,
            scale: self.store_new(format!("{out}.scale"), scale)?,
            bias: self.store_new(format!("{out}.shift"), shift)?,
            mean: self.store_new(format!("{out}.mean"), vec![0.0; channels])?,
            var: self.store_new(format!("{out}.var"), vec![1.0; channels])?,
        };
        self.push(node, Op::BatchNorm(bn), vec![x])
    }
}

/// A dense weight whose input rows follow a `[H, W, C]` flatten, with its rows reordered
/// for the graph's `[C, H, W]` flatten (`layout` says whether inputs are the rows of the
/// matrix, [`DenseLayout::InOut`], or its columns).
fn rows_to_nchw(w: &Constant, [c, h, wd]: [usize; 3], layout: DenseLayout) -> Result<Constant> {
    let (rows, cols) = (w.dims[0], w.dims[1]);
    let inputs = match layout {
        DenseLayout::InOut => rows,
        DenseLayout::OutIn => cols,
    };
    if inputs != c * h * wd {
        return Err(error(format!(
            "weight of dims {:?} for {} features (a {c}x{h}x{wd} map)",
            w.dims,
            c * h * wd
        )));
    }
    // Graph input i = (ch, y, x) in C, H, W order reads the file's input (y, x, ch).
    let file_input = |i: usize| {
        let (ch, yx) = (i / (h * wd), i % (h * wd));
        yx * c + ch
    };
    let mut values = vec![0.0; w.values.len()];
    match layout {
        DenseLayout::InOut => {
            for (i, row) in values.chunks_exact_mut(cols).enumerate() {
                let from = file_input(i) * cols;
                row.copy_from_slice(&w.values[from..from + cols]);
            }
        }
        DenseLayout::OutIn => {
            for (o, row) in values.chunks_exact_mut(cols).enumerate() {
                let src = &w.values[o * cols..(o + 1) * cols];
                for (i, v) in row.iter_mut().enumerate() {
                    *v = src[file_input(i)];
                }
            }
        }
    }
    // A new name: the file's tensor under its own name holds the other order.
    Ok(Constant {
        name: String::new(),
        dims: w.dims.clone(),
        values,
    })
}

fn node_label(node: &NodeProto) -> &str {
    if node.name.is_empty() {
        node.output.first().map_or("", String::as_str)
    } else {
        &node.name
    }
}

fn input_name(node: &NodeProto, k: usize) -> Result<&str> {
    match node.input.get(k) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(error(format!("input {k} is missing"))),
    }
}

fn output_name(node: &NodeProto) -> Result<&str> {
    match node.output.first() {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(error("the node has no output")),
    }
}

fn positive(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v <= graph::MAX_DIM)
        .ok_or_else(|| error(format!("{what} {v} is outside 1..={}", graph::MAX_DIM)))
}

/// A two-value integer attribute (`strides`, `dilations`, `kernel_shape`) of a 2-D op.
fn pair(attrs: &Attributes, name: &str, default: [i64; 2]) -> Result<[usize; 2]> {
    let v = match attrs.get(name) {
        Some(a) => a.ints.clone(),
        None => default.to_vec(),
    };
    match v[..] {
        [a, b] => Ok([positive(a, name)?, positive(b, name)?]),
        _ => Err(error(format!(
            "{name} {v:?}: edgemm runs 2-D ops (two values)"
        ))),
    }
}

/// ONNX `pads` `[top, left, bottom, right]` (default zeros).
fn pads4(attrs: &Attributes) -> Result<[usize; 4]> {
    let v = attrs.ints("pads");
    if v.is_empty() {
        return Ok([0; 4]);
    }
    let [t, l, b, r] = v[..] else {
        return Err(error(format!(
            "pads {v:?}: edgemm pads 2-D maps (four values)"
        )));
    };
    let one = |p: i64| {
        usize::try_from(p)
            .ok()
            .filter(|&p| p <= graph::MAX_DIM)
            .ok_or_else(|| error(format!("pad {p} is outside 0..={}", graph::MAX_DIM)))
    };
    Ok([one(t)?, one(l)?, one(b)?, one(r)?])
}

/// A node's attributes by name.
struct Attributes<'a> {
    by_name: HashMap<&'a str, &'a AttributeProto>,
}

impl<'a> Attributes<'a> {
    fn new(node: &'a NodeProto) -> Result<Self> {
        let mut by_name = HashMap::new();
        for a in &node.attribute {
            if by_name.insert(a.name.as_str(), a).is_some() {
                return Err(error(format!("attribute {:?} is given twice", a.name)));
            }
        }
        Ok(Attributes { by_name })
    }

    /// Refuses any attribute not in `known`.
    fn only(&self, known: &[&str]) -> Result<()> {
        let mut unknown: Vec<&str> = self
            .by_name
            .keys()
            .copied()
            .filter(|k| !known.contains(k))
            .collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(name) => Err(error(format!(
                "attribute {name:?} is not supported (edgemm reads {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.by_name.get(name).copied()
    }

    fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    fn string(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|a| std::str::from_utf8(&a.s).ok())
    }

    fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }
}
