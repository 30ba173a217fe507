//! Hostile and broken pictures: skipped with a reason, the good ones indexed, alone or in
//! batches.

use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::SearchRequest;

use crate::util::*;

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A valid PNG header that declares 100000 x 100000 pixels (30 GB decoded): a decompression bomb.
fn png_bomb() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_pictures_are_skipped_with_a_reason_and_good_ones_indexed() {
    use image::{DynamicImage, ImageFormat};
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let source = image::open(data("shapes").join("red_circle.jpg")).expect("fixture");
    let jpeg = std::fs::read(data("shapes").join("red_circle.jpg")).expect("fixture");
    // Good, in unusual forms.
    source.to_luma8().save(d.join("grey.jpg")).expect("grey");
    DynamicImage::ImageRgb16(source.to_rgb16())
        .save(d.join("deep.png"))
        .expect("16-bit");
    DynamicImage::ImageRgba8(source.to_rgba8())
        .save(d.join("alpha.png"))
        .expect("alpha");
    source
        .save_with_format(d.join("lossless.webp"), ImageFormat::WebP)
        .expect("webp");
    source
        .save_with_format(d.join("still.gif"), ImageFormat::Gif)
        .expect("gif");
    source
        .save_with_format(d.join("plain.bmp"), ImageFormat::Bmp)
        .expect("bmp");
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg")), &jpeg)
            .expect("latin-1 name");
        std::os::unix::fs::symlink(d, d.join("loop")).expect("symlink loop");
    }
    let good = 7;
    // Bad.
    std::fs::write(d.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).expect("truncated");
    std::fs::write(d.join("empty.jpg"), b"").expect("empty");
    std::fs::write(d.join("notes.jpg"), b"shopping list: eggs, milk").expect("text");
    std::fs::write(d.join("bomb.png"), png_bomb()).expect("bomb");
    let mut flipped = jpeg.clone();
    for b in flipped.iter_mut().skip(200).step_by(7) {
        *b ^= 0xff;
    }
    std::fs::write(d.join("corrupt.jpg"), flipped).expect("corrupt");
    std::fs::write(d.join("video.mp4"), b"\0\0\0\x18ftypmp42").expect("video");

    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let cloud = Cloud::start(cloud_config(&broker.url(), "hostile-w"))
        .await
        .expect("cloud");
    let device = Device::start(device_config(&broker.url(), "hostile", &[d], state.path()))
        .await
        .expect("device");
    let status = wait_idle(&device).await;
    let failed: Vec<String> = status
        .recent_failures
        .iter()
        .map(|f| file_name(&f.path))
        .collect();
    println!("{:#?}", status.recent_failures);
    assert_eq!(status.indexed, good, "{status:#?}");
    for bad in [
        "truncated.jpg",
        "empty.jpg",
        "notes.jpg",
        "bomb.png",
        "video.mp4",
    ] {
        assert!(
            failed.contains(&bad.to_string()),
            "{bad} not reported: {failed:?}"
        );
    }
    assert!(status.recent_failures.iter().all(|f| !f.error.is_empty()));
    // A corrupt JPEG may still decode to garbage pixels (JPEG has no checksum); it must
    // either be indexed or reported, never crash anything.
    assert_eq!(status.indexed + status.failed, good + 6, "{status:#?}");
    let response = device
        .search(SearchRequest {
            k: Some(3),
            ..SearchRequest::text("a red circle")
        })
        .await
        .expect("search");
    assert_eq!(hits(&response).len(), 3);
    device.shutdown().await.expect("shutdown");
    cloud.shutdown().await.expect("cloud shutdown");
}

/// Pictures encoded in batches (gathered from the queue, several per run of the model) get
/// the vectors they get one at a time, and a bad picture in a batch is reported alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pictures_encoded_in_batches_rank_exactly_as_the_model_does_and_bad_ones_fail_alone() {
    let shapes = data("shapes");
    let good = labels(&shapes).len();
    let pictures = copy_pictures(&shapes);
    let jpeg = std::fs::read(shapes.join("red_circle.jpg")).expect("fixture");
    std::fs::write(
        pictures.path().join("truncated.jpg"),
        &jpeg[..jpeg.len() / 3],
    )
    .expect("truncated");
    std::fs::write(
        pictures.path().join("notes.jpg"),
        b"shopping list: eggs, milk",
    )
    .expect("text");
    let reference = Reference::new(&shapes);
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let cloud = Cloud::start(cloud_config(&broker.url(), "batches-w"))
        .await
        .expect("cloud");
    let mut config = device_config(&broker.url(), "batches", &[pictures.path()], state.path());
    // One worker, so that the first scan's pictures queue up and are taken 3 at a time.
    config.encoder.batch = 3;
    config.encoder.workers = 1;
    let device = Device::start(config).await.expect("device");
    let status = wait_idle(&device).await;
    assert_eq!(
        (status.indexed as usize, status.encoder_batch),
        (good, 3),
        "{status:#?}"
    );
    let failed: Vec<String> = status
        .recent_failures
        .iter()
        .map(|f| file_name(&f.path))
        .collect();
    assert_eq!(status.failed, 2, "{status:#?}");
    for bad in ["truncated.jpg", "notes.jpg"] {
        assert!(
            failed.contains(&bad.to_string()),
            "{bad} not reported: {failed:?}"
        );
    }
    for text in [
        "a red circle",
        "a blue square",
        "a yellow star and a purple square",
    ] {
        let response = device
            .search(SearchRequest {
                k: Some(good),
                ..SearchRequest::text(text)
            })
            .await
            .expect("search");
        assert_same_ranking(&scored(&response), &reference.rank(text, good), text);
    }
    device.shutdown().await.expect("shutdown");
    cloud.shutdown().await.expect("cloud shutdown");
}
