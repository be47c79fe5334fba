//! TF Serving's REST shapes, as a SageMaker endpoint serving a TensorFlow model speaks them:
//! `{"instances": [...]}` (row form) answers `{"predictions": [...]}`, `{"inputs": ...}`
//! (columnar form) answers `{"outputs": [...]}`, a failure answers `{"error": "..."}`. Images
//! travel as `{"b64": "<base64 PNG or JPEG>"}`; a one-key object (`{"image": ...}`, a named
//! input) is read as its value.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::error::{Error, InputError, Result};
use crate::runtime::{Input, Runtime};

/// Requests bigger than this are refused before parsing.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
const MAX_NESTING: usize = 6;

/// One decoded item of a request, owning its data.
enum Item {
    Image(Vec<u8>),
    Tensor { data: Vec<f32>, shape: Vec<usize> },
}

fn bad(message: impl Into<String>) -> Error {
    InputError::Request(message.into()).into()
}

/// Flattens nested JSON arrays of numbers, checking they are rectangular.
fn tensor(value: &Value) -> Result<(Vec<f32>, Vec<usize>)> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        if shape.len() > MAX_NESTING {
            return Err(bad(format!("arrays nested deeper than {MAX_NESTING}")));
        }
        match items.first() {
            Some(first) => probe = first,
            None => return Err(bad("empty array in a tensor")),
        }
    }
    // The shape was read off the first element at each level only; nothing is reserved from it
    // before `flatten` has checked every row, so a small body cannot claim a huge tensor.
    let mut data = Vec::new();
    flatten(value, &shape, &mut data)?;
    Ok((data, shape))
}

fn flatten(value: &Value, shape: &[usize], out: &mut Vec<f32>) -> Result<()> {
    match (value, shape.split_first()) {
        (Value::Number(n), None) => {
            let v = n.as_f64().ok_or_else(|| bad("number out of range"))?;
            out.push(v as f32);
            Ok(())
        }
        (Value::Array(items), Some((&len, rest))) if items.len() == len => {
            items.iter().try_for_each(|item| flatten(item, rest, out))
        }
        (Value::Array(_), Some(_)) => Err(bad("ragged array: rows of different lengths")),
        _ => Err(bad(
            "a tensor holds only numbers in nested arrays of equal lengths",
        )),
    }
}

fn b64(value: &Value, max_bytes: usize) -> Result<Vec<u8>> {
    let text = value
        .as_str()
        .ok_or_else(|| bad("\"b64\" must be a string"))?;
    // Refuse before decoding: base64 is 4 characters per 3 bytes.
    let decoded_len = text.len() / 4 * 3;
    if decoded_len > max_bytes + 3 {
        return Err(InputError::TooManyBytes {
            len: decoded_len,
            limit: max_bytes,
        }
        .into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| bad(format!("\"b64\" is not valid base64: {e}")))
}

/// A `{"b64": ...}` image, a one-key named input, or a nested array.
fn item(value: &Value, max_bytes: usize) -> Result<Item> {
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key("b64") => {
            Ok(Item::Image(b64(&map["b64"], max_bytes)?))
        }
        Value::Object(map) if map.len() == 1 => {
            item(map.values().next().expect("one entry"), max_bytes)
        }
        Value::Object(_) => Err(bad(
            "an instance object must be {\"b64\": ...} or hold exactly one named input",
        )),
        Value::Array(_) => {
            let (data, shape) = tensor(value)?;
            Ok(Item::Tensor { data, shape })
        }
        _ => Err(bad(
            "an instance must be an array of numbers or {\"b64\": ...}",
        )),
    }
}

/// Which form the request used; the answer uses the matching key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Instances,
    Inputs,
}

fn parse(body: &[u8], max_image_bytes: usize) -> Result<(Form, Vec<Item>)> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(bad(format!(
            "request is {} bytes, over the {MAX_REQUEST_BYTES}-byte limit",
            body.len()
        )));
    }
    let request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    if let Some(key) = request
        .keys()
        .find(|k| !matches!(k.as_str(), "instances" | "inputs" | "signature_name"))
    {
        return Err(bad(format!("unknown key {key:?}")));
    }
    match (request.get("instances"), request.get("inputs")) {
        (Some(_), Some(_)) => Err(bad(
            "request has both \"instances\" and \"inputs\"; send exactly one (TF Serving rule)",
        )),
        (None, None) => Err(bad("request has neither \"instances\" nor \"inputs\"")),
        (Some(instances), None) => {
            let rows = instances
                .as_array()
                .ok_or_else(|| bad("\"instances\" must be a list"))?;
            if rows.is_empty() {
                return Err(InputError::EmptyBatch.into());
            }
            let items = rows
                .iter()
                .map(|row| item(row, max_image_bytes))
                .collect::<Result<_>>()?;
            Ok((Form::Instances, items))
        }
        (None, Some(inputs)) => {
            let inputs = match inputs {
                Value::Object(map) if map.len() == 1 && !map.contains_key("b64") => {
                    map.values().next().expect("one entry")
                }
                other => other,
            };
            let items = match inputs {
                // A list of images.
                Value::Array(list) if list.first().is_some_and(Value::is_object) => list
                    .iter()
                    .map(|v| item(v, max_image_bytes))
                    .collect::<Result<_>>()?,
                // One image, or one tensor holding the whole batch.
                other => vec![item(other, max_image_bytes)?],
            };
            Ok((Form::Inputs, items))
        }
    }
}

/// Answers a TF Serving request body for model `name`; errors come back as `Err` (see
/// [`error_body`] for their JSON form).
pub fn invoke_json(runtime: &Runtime, name: &str, body: &[u8]) -> Result<Value> {
    let (form, items) = parse(body, runtime.options().image_limits.max_bytes)?;
    let inputs: Vec<Input<'_>> = items
        .iter()
        .map(|item| match item {
            Item::Image(bytes) => Input::Image(bytes),
            Item::Tensor { data, shape } => Input::Tensor { data, shape },
        })
        .collect();
    if form == Form::Instances {
        // An instance must be a single item: a 4-D "instance" would smuggle a batch in.
        for item in &items {
            if let Item::Tensor { shape, .. } = item {
                if shape.len() != 3 {
                    return Err(InputError::TensorShape {
                        expected: "one instance of rank 3 ([H, W, 3] for NHWC)".into(),
                        actual: shape.clone(),
                    }
                    .into());
                }
            }
        }
    }
    let response = runtime.invoke_batch(name, &inputs)?;
    let rows: Vec<&Vec<f32>> = response
        .predictions
        .iter()
        .map(|p| &p.probabilities)
        .collect();
    Ok(match form {
        Form::Instances => json!({ "predictions": rows }),
        Form::Inputs => json!({ "outputs": rows }),
    })
}

/// `{"error": "<message>"}`, as TF Serving answers a failed request.
pub fn error_body(error: &Error) -> Value {
    json!({ "error": error.to_string() })
}

/// The HTTP status a SageMaker endpoint would answer with for this error.
pub fn http_status(error: &Error) -> u16 {
    use crate::error::ErrorKind::*;
    match error.kind() {
        InvalidArgument | BadInput => 400,
        NotFound => 404,
        InsufficientMemory => 507,
        BadArtifact | Internal => 500,
    }
}
