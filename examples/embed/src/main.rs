//! Embedding edgemm in a Rust program: open a model repository, classify images by model
//! name, print the top-3 and the timing.
//!
//! ```text
//! cargo run -p edgemm-example-embed -- models/repository efficientnet-lite0.tar.gz \
//!     models/samples/imagenet/cat.png
//! ```

use edgemm::{Input, Runtime, RuntimeOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(repo), Some(model)) = (args.next(), args.next()) else {
        return Err("usage: edgemm-example-embed REPOSITORY MODEL IMAGE...".into());
    };
    let mut options = RuntimeOptions::new(repo);
    options.top_k = 3;
    let runtime = Runtime::new(options)?;
    for path in args {
        let bytes = std::fs::read(&path)?;
        // A bad image is reported and skipped; the runtime keeps serving.
        match runtime.invoke(&model, Input::Image(&bytes)) {
            Ok(response) => {
                let top: Vec<String> = response.predictions[0]
                    .top_k
                    .iter()
                    .map(|s| format!("{} ({:.3})", s.label, s.probability))
                    .collect();
                println!(
                    "{path}: {} in {} us",
                    top.join(", "),
                    response.timing.total_us
                );
            }
            Err(e) => eprintln!("{path}: {e}"),
        }
    }
    Ok(())
}
