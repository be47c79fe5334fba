//! `config.pbtxt`: the fields of Triton's model configuration edgemm reads, and their check
//! against the imported ONNX model.

use std::collections::HashMap;

use edgemm_models::onnx::{Imported, InputLayout};

use super::pbtxt::{self, Field, Located};
use crate::error::ArtifactError;
use crate::manifest::Layout;

/// Dimensions of one tensor at most.
const MAX_DIMS: usize = 8;

/// What config.pbtxt, checked against the ONNX model, says of the model's input and output.
pub(super) struct Checked {
    pub layout: Layout,
    /// `None` when neither gives it.
    pub size: Option<(usize, usize)>,
    pub label_file: Option<String>,
    /// The input block's line (or 1), for errors about it.
    pub input_line: usize,
}

/// One `input` or `output` block.
#[derive(Clone, Debug)]
struct TensorConfig {
    name: String,
    line: usize,
    data_type: Option<String>,
    format: Option<String>,
    dims: Option<Vec<i64>>,
    label_filename: Option<String>,
    reshape: bool,
}

/// The fields of `config.pbtxt` edgemm reads.
#[derive(Clone, Debug)]
pub(super) struct ModelConfig {
    file: String,
    /// With the line it was given on.
    pub name: Option<(String, usize)>,
    platform: Option<String>,
    backend: Option<String>,
    max_batch_size: i64,
    pub default_model_filename: Option<String>,
    inputs: Vec<TensorConfig>,
    outputs: Vec<TensorConfig>,
}

impl ModelConfig {
    pub fn error(&self, line: usize, reason: impl Into<String>) -> ArtifactError {
        ArtifactError::TritonConfig {
            file: self.file.clone(),
            line,
            reason: reason.into(),
        }
    }

    /// Reads `text`, the contents of `file` (which labels errors).
    pub fn parse(file: &str, text: &[u8]) -> Result<Self, ArtifactError> {
        let error = |line: usize, reason: String| ArtifactError::TritonConfig {
            file: file.to_string(),
            line,
            reason,
        };
        let text = std::str::from_utf8(text).map_err(|e| {
            let line = 1 + text[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            error(line, "not UTF-8 text".into())
        })?;
        let tokens = pbtxt::tokenize(text).map_err(|(line, reason)| error(line, reason))?;
        let fields = pbtxt::parse(&tokens).map_err(|(line, reason)| error(line, reason))?;
        Self::read(file, &fields).map_err(|(line, reason)| error(line, reason))
    }

    fn read(file: &str, fields: &[Field]) -> Result<Self, Located> {
        let mut config = ModelConfig {
            file: file.to_string(),
            name: None,
            platform: None,
            backend: None,
            max_batch_size: 0,
            default_model_filename: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let mut seen = HashMap::new();
        for field in fields {
            let once = |seen: &mut HashMap<String, usize>| match seen
                .insert(field.name.clone(), field.line)
            {
                Some(first) => Err((
                    field.line,
                    format!("{} given twice (first on line {first})", field.name),
                )),
                None => Ok(()),
            };
            match field.name.as_str() {
                "name" => {
                    once(&mut seen)?;
                    config.name = Some((field.string()?, field.line));
                }
                "platform" => {
                    once(&mut seen)?;
                    config.platform = Some(field.string()?);
                }
                "backend" => {
                    once(&mut seen)?;
                    config.backend = Some(field.string()?);
                }
                "max_batch_size" => {
                    once(&mut seen)?;
                    let n = field.int()?;
                    if !(0..=i64::from(i32::MAX)).contains(&n) {
                        return Err((
                            field.line,
                            format!("max_batch_size {n} is not a count (0 or more)"),
                        ));
                    }
                    config.max_batch_size = n;
                }
                "default_model_filename" => {
                    once(&mut seen)?;
                    let name = field.string()?;
                    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                        return Err((
                            field.line,
                            format!(
                                "default_model_filename {name:?} is not a file name in the version directory"
                            ),
                        ));
                    }
                    config.default_model_filename = Some(name);
                }
                "input" => {
                    for block in field.blocks()? {
                        config.inputs.push(TensorConfig::read(field, block)?);
                    }
                }
                "output" => {
                    for block in field.blocks()? {
                        config.outputs.push(TensorConfig::read(field, block)?);
                    }
                }
                // instance_group, dynamic_batching, version_policy, parameters, optimization...:
                // how Triton schedules the model, nothing that changes its answers.
                _ => {}
            }
        }
        Ok(config)
    }

    /// Refuses a config for another backend than ONNX Runtime.
    pub fn check_platform(&self) -> Result<(), ArtifactError> {
        let refuse = |field, found: &str| ArtifactError::TritonPlatform {
            file: self.file.clone(),
            field,
            found: found.to_string(),
        };
        if let Some(p) = &self.platform {
            if p != "onnxruntime_onnx" {
                return Err(refuse("platform", p));
            }
        }
        if let Some(b) = &self.backend {
            if b != "onnxruntime" {
                return Err(refuse("backend", b));
            }
        }
        Ok(())
    }

    /// Checks the config against the imported model: one input and one output, their names,
    /// `TYPE_FP32`, format and dims. Blocks left out are taken from the model, as Triton's
    /// auto-complete does.
    pub fn check(&self, imported: &Imported) -> Result<Checked, ArtifactError> {
        for (what, list) in [("input", &self.inputs), ("output", &self.outputs)] {
            if list.len() > 1 {
                return Err(self.error(
                    list[1].line,
                    format!(
                        "{} {what}s: edgemm serves image classifiers, one input and one output",
                        list.len()
                    ),
                ));
            }
        }
        let batched = self.max_batch_size > 0;
        let batch_note = if batched {
            format!(
                "max_batch_size {} leaves the batch dimension out of dims",
                self.max_batch_size
            )
        } else {
            "max_batch_size 0: dims give the whole shape, batch first".to_string()
        };
        let onnx_layout = match imported.input_layout {
            InputLayout::Nchw => Layout::Nchw,
            InputLayout::Nhwc => Layout::Nhwc,
        };
        let onnx_size = imported.graph.input.size;
        let mut checked = Checked {
            layout: onnx_layout,
            size: onnx_size,
            label_file: None,
            input_line: 1,
        };
        if let Some(input) = self.inputs.first() {
            checked.input_line = input.line;
            self.check_tensor(input, "input", &imported.input_name)?;
            if let Some(format) = &input.format {
                let layout = match format.as_str() {
                    "FORMAT_NCHW" => Some(Layout::Nchw),
                    "FORMAT_NHWC" => Some(Layout::Nhwc),
                    "FORMAT_NONE" => None,
                    other => {
                        return Err(self.error(
                            input.line,
                            format!(
                                "input {:?} has format {other}; expected FORMAT_NCHW, FORMAT_NHWC or FORMAT_NONE",
                                input.name
                            ),
                        ))
                    }
                };
                if layout.is_some_and(|l| l != onnx_layout) {
                    return Err(self.error(
                        input.line,
                        format!(
                            "input {:?} has format {format} but the ONNX model's input is {:?}",
                            input.name, onnx_layout
                        ),
                    ));
                }
            }
            if let Some(dims) = &input.dims {
                let show = |h: Option<usize>, w: Option<usize>| {
                    let d = |v: Option<usize>| v.map_or("-1".to_string(), |v| v.to_string());
                    match onnx_layout {
                        Layout::Nchw => format!("[3, {}, {}]", d(h), d(w)),
                        Layout::Nhwc => format!("[{}, {}, 3]", d(h), d(w)),
                    }
                };
                let model_dims = show(onnx_size.map(|s| s.0), onnx_size.map(|s| s.1));
                let mismatch = || {
                    self.error(
                        input.line,
                        format!(
                            "input {:?} dims {dims:?} do not match the ONNX model's input {}{model_dims} ({batch_note})",
                            input.name,
                            if batched { "" } else { "[N] + " }
                        ),
                    )
                };
                let item = match (batched, dims.as_slice()) {
                    (true, [a, b, c]) => [*a, *b, *c],
                    (false, [n, a, b, c]) if *n == -1 || *n >= 1 => [*a, *b, *c],
                    _ => return Err(mismatch()),
                };
                let (c, h, w) = match onnx_layout {
                    Layout::Nchw => (item[0], item[1], item[2]),
                    Layout::Nhwc => (item[2], item[0], item[1]),
                };
                if c != 3 {
                    return Err(mismatch());
                }
                let pick = |given: i64, model: Option<usize>| match (given, model) {
                    (-1, m) => Ok(m),
                    (g, Some(m)) if g == m as i64 => Ok(Some(m)),
                    (g, None) if (1..=8192).contains(&g) => Ok(Some(g as usize)),
                    _ => Err(mismatch()),
                };
                let h = pick(h, onnx_size.map(|s| s.0))?;
                let w = pick(w, onnx_size.map(|s| s.1))?;
                checked.size = h.zip(w);
            }
        }
        if let Some(output) = self.outputs.first() {
            self.check_tensor(output, "output", &imported.output_name)?;
            let classes = imported.graph.classes()?;
            if let Some(dims) = &output.dims {
                let ok = match (batched, dims.as_slice()) {
                    (true, [k]) => *k == -1 || *k == classes as i64,
                    (false, [n, k]) => (*n == -1 || *n >= 1) && (*k == -1 || *k == classes as i64),
                    _ => false,
                };
                if !ok {
                    return Err(self.error(
                        output.line,
                        format!(
                            "output {:?} dims {dims:?} do not match the ONNX model's output {}[{classes}] ({batch_note})",
                            output.name,
                            if batched { "" } else { "[N] + " }
                        ),
                    ));
                }
            }
            checked.label_file = output.label_filename.clone();
            if let Some(name) = &checked.label_file {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(self.error(
                        output.line,
                        format!(
                            "label_filename {name:?} is not a file name in the model directory"
                        ),
                    ));
                }
            }
        }
        Ok(checked)
    }

    fn check_tensor(
        &self,
        tensor: &TensorConfig,
        what: &str,
        onnx_name: &str,
    ) -> Result<(), ArtifactError> {
        if tensor.name != onnx_name {
            return Err(self.error(
                tensor.line,
                format!(
                    "{what} {:?} is not in the ONNX model: its {what} is named {onnx_name:?}",
                    tensor.name
                ),
            ));
        }
        if let Some(t) = tensor.data_type.as_deref().filter(|t| *t != "TYPE_FP32") {
            return Err(self.error(
                tensor.line,
                format!(
                    "{what} {:?} has data_type {t}: edgemm serves TYPE_FP32 inputs and outputs only",
                    tensor.name
                ),
            ));
        }
        if tensor.reshape {
            return Err(self.error(
                tensor.line,
                format!(
                    "{what} {:?} has a reshape, which edgemm does not apply: give dims as the ONNX model takes them",
                    tensor.name
                ),
            ));
        }
        Ok(())
    }
}

impl TensorConfig {
    fn read(field: &Field, block: &[Field]) -> Result<Self, Located> {
        let mut tensor = TensorConfig {
            name: String::new(),
            line: field.line,
            data_type: None,
            format: None,
            dims: None,
            label_filename: None,
            reshape: false,
        };
        let mut named = false;
        for f in block {
            match f.name.as_str() {
                "name" => {
                    tensor.name = f.string()?;
                    tensor.line = f.line;
                    named = true;
                }
                "data_type" => tensor.data_type = Some(f.word()?),
                "format" => tensor.format = Some(f.word()?),
                "dims" => {
                    let dims = tensor.dims.get_or_insert_with(Vec::new);
                    dims.extend(f.ints()?);
                    if dims.len() > MAX_DIMS {
                        return Err((f.line, format!("more than {MAX_DIMS} dims")));
                    }
                    if let Some(d) = dims.iter().find(|d| **d < -1 || **d > 1 << 20) {
                        return Err((f.line, format!("dims value {d} is not -1 or a size")));
                    }
                }
                "label_filename" => tensor.label_filename = Some(f.string()?),
                "reshape" => tensor.reshape = true,
                _ => {}
            }
        }
        if !named {
            return Err((field.line, format!("this {} block has no name", field.name)));
        }
        Ok(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENSENET: &str = r#"
# Triton's densenet_onnx example, with the blocks it leaves to defaults spelled out.
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 1, 3, 224, 224 ]
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1, 1000 ]
    label_filename: "densenet_labels.txt"
  }
]
instance_group [ { count: 2, kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
version_policy: { latest { num_versions: 1 } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"#;

    #[test]
    fn reads_the_fields_and_skips_other_blocks() {
        let c = ModelConfig::parse("m/config.pbtxt", DENSENET.as_bytes()).unwrap();
        assert_eq!(c.name.as_ref().unwrap().0, "densenet_onnx");
        assert_eq!(c.platform.as_deref(), Some("onnxruntime_onnx"));
        assert_eq!(c.max_batch_size, 0);
        assert_eq!(c.inputs.len(), 1);
        assert_eq!(c.inputs[0].name, "data_0");
        assert_eq!(c.inputs[0].dims.as_deref(), Some(&[1, 3, 224, 224][..]));
        assert_eq!(c.inputs[0].format.as_deref(), Some("FORMAT_NCHW"));
        assert_eq!(c.outputs[0].dims.as_deref(), Some(&[1, 1000][..]));
        assert_eq!(
            c.outputs[0].label_filename.as_deref(),
            Some("densenet_labels.txt")
        );
    }

    #[test]
    fn repeated_blocks_and_scalars_read_as_lists() {
        let text = "input { name: 'a' dims: 3 dims: 8 dims: 8 }\ninput < name: \"b\" >";
        let c = ModelConfig::parse("c", text.as_bytes()).unwrap();
        assert_eq!(c.inputs.len(), 2);
        assert_eq!(c.inputs[0].dims.as_deref(), Some(&[3, 8, 8][..]));
        assert_eq!(c.inputs[1].name, "b");
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        let cases: &[(&str, usize, &str)] = &[
            ("name: \"x\"\ninput [ { name: \"a\" ", 2, "expected '}'"),
            ("name \"x\"", 1, "expected ':'"),
            ("\n\nmax_batch_size: eight", 3, "expected an integer"),
            ("name: x", 1, "expected a quoted string"),
            ("dims: [1, 2", 1, "expected ',' or ']'"),
            (
                "name: \"x\"\nname: \"y\"",
                2,
                "given twice (first on line 1)",
            ),
            ("input [ { dims: [3] } ]", 1, "has no name"),
            ("}", 1, "expected a field name"),
            ("name: \"unclosed", 1, "string not closed"),
            ("a { b { c { d {", 1, "expected '}'"),
            ("platform: @", 1, "unexpected character '@'"),
        ];
        for (text, line, reason) in cases {
            match ModelConfig::parse("m/config.pbtxt", text.as_bytes()) {
                Err(ArtifactError::TritonConfig {
                    file,
                    line: l,
                    reason: r,
                }) => {
                    assert_eq!(file, "m/config.pbtxt");
                    assert_eq!(l, *line, "{text:?}: {r}");
                    assert!(r.contains(reason), "{text:?}: {r}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    /// Every truncation of a real config, and every byte of it replaced by each of the
    /// characters that matter to the grammar, parses or is an error: never a panic.
    #[test]
    fn truncated_and_mutated_configs_never_panic() {
        let text = DENSENET.as_bytes();
        for end in 0..text.len() {
            let _ = ModelConfig::parse("c", &text[..end]);
        }
        for i in 0..text.len() {
            for b in *b"{}[]<>:,;\"'#-0a\xff" {
                let mut mutated = text.to_vec();
                mutated[i] = b;
                let _ = ModelConfig::parse("c", &mutated);
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing_further() {
        let text = "a { ".repeat(10_000);
        let err = ModelConfig::parse("c", text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nested deeper than 32"), "{err}");
    }

    #[test]
    fn other_platforms_are_refused_by_name() {
        for (text, found) in [
            ("platform: \"tensorrt_plan\"", "tensorrt_plan"),
            ("backend: \"pytorch\"", "pytorch"),
        ] {
            let c = ModelConfig::parse("m/config.pbtxt", text.as_bytes()).unwrap();
            let err = c.check_platform().unwrap_err();
            assert!(
                matches!(&err, ArtifactError::TritonPlatform { found: f, .. } if f == found),
                "{err}"
            );
            assert!(err.to_string().contains("onnxruntime_onnx"), "{err}");
        }
        let c = ModelConfig::parse("c", b"backend: \"onnxruntime\"").unwrap();
        c.check_platform().unwrap();
    }
}
