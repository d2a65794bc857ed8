"""A synthetic person web: procedurally rendered persons with known boxes, keypoints, identities and clean
captions, published as a static site with web-like alt text and hostile content, served on 127.0.0.1.

    render_site(out_dir, images, seed) -> SiteInfo          the static site + ground_truth.jsonl
    SiteServer(site_dir, port=0)                            real threaded HTTP server with the faults
    write_url_list(site_dir, base_url, out_path)            img2dataset-style list (url, caption)
    render_identity_dataset(num_identities, images_per_identity, seed, size)  person crops for training
    make_alt_text(identity, rng)                            web-like alt text with per-word noise flags
"""
from curation.synthweb.alttext import AltText, make_alt_text
from curation.synthweb.dataset import PersonSample, iter_identity_dataset, render_identity_dataset
from curation.synthweb.figure import FLIP_INDEX, KEYPOINT_NAMES
from curation.synthweb.identities import Identity, clean_caption, identity_attributes
from curation.synthweb.server import SiteServer
from curation.synthweb.site import SiteInfo, render_site, write_url_list

__all__ = [
    "AltText", "FLIP_INDEX", "Identity", "KEYPOINT_NAMES", "PersonSample", "SiteInfo", "SiteServer",
    "clean_caption", "identity_attributes", "iter_identity_dataset", "make_alt_text", "render_identity_dataset",
    "render_site", "write_url_list",
]
