//! Checks that tract's embeddings equal onnxruntime's for a model folder.
//!
//! `python models/parity.py MODEL_DIR OUT_DIR` saves inputs and onnxruntime's outputs, then
//! `cargo run --release --example parity -- MODEL_DIR OUT_DIR` compares.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, parity] = args.as_slice() else {
        anyhow::bail!("usage: parity MODEL_DIR PARITY_DIR");
    };
    let report = edgeclip::parity::check(model.as_ref(), parity.as_ref())?;
    println!("{report:#?}");
    anyhow::ensure!(
        report.image_min_cosine >= 0.9999 && report.text_min_cosine >= 0.9999,
        "tract and onnxruntime disagree"
    );
    println!("tract matches onnxruntime (cosine >= 0.9999 on every vector)");
    Ok(())
}
