"""Reference mapping as scvi-tools does it: load_query_data and prepare_query_anndata."""

import mudata as md
import numpy as np
import pytest
import torch
from helpers import fast_train_kwargs, fingerprint

import myvae as mv
from myvae import InputError

N_QUERY = 30
"""The last cells of the small data are the query."""


def _split(adata, reference_batches=("a", "b"), query_batches=("c", "a")):
    """Reference and query cells of the small data, with the batches given (in turn, cell by cell)."""
    reference, query = adata[:-N_QUERY].copy(), adata[-N_QUERY:].copy()
    reference.obs["sample"] = np.resize(np.array(reference_batches), reference.n_obs)
    query.obs["sample"] = np.resize(np.array(query_batches), query.n_obs)
    return reference, query


def _trained(reference, backend="torch"):
    return mv.tl.myvae(reference, batch_key="sample", backend=backend, return_model=True, **fast_train_kwargs())


def _changed_columns(before, after):
    return np.flatnonzero((before != after).any(dim=0).numpy()).tolist()


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_training_a_query_model_moves_only_the_new_batches_decoder_columns(small_adata, backend):
    reference, query = _split(small_adata)
    model = _trained(reference, backend)
    before = fingerprint(query)
    reference_weights = {name: value.clone() for name, value in model.module.state_dict().items()}
    query_model = mv.MyVAE.load_query_data(query, model)
    assert query_model.batch_categories == ["a", "b", "c"] and not query_model.is_trained_
    start = {name: value.clone() for name, value in query_model.module.state_dict().items()}
    for name, value in model.module.state_dict().items():  # the reference's weights, its batch columns included
        np.testing.assert_array_equal(start[name][:, : value.shape[1]] if value.ndim == 2 else start[name], value)

    query_model.train(**{**fast_train_kwargs(max_epochs=3), "early_stopping": False})
    trained = query_model.module.state_dict()
    for name, value in start.items():
        if name == "networks.decoder.0.weight":
            assert _changed_columns(value, trained[name]) == [query_model.n_latent + 2]  # the column of "c"
        else:
            assert torch.equal(value, trained[name]), name
    assert fingerprint(query) == before
    for name, value in model.module.state_dict().items():  # the reference model itself is untouched
        assert torch.equal(value, reference_weights[name]), name

    embedded = query.copy()
    mv.tl.myvae(embedded, model=model, progress=False)
    np.testing.assert_allclose(query_model.get_latent_representation(), embedded.obsm["X_myvae"], rtol=0, atol=1e-6)
    decoded = query_model.get_normalized_expression(transform_batch="c")
    assert decoded.shape == (N_QUERY, small_adata.n_vars) and np.isfinite(decoded.to_numpy()).all()


def test_a_saved_reference_gives_the_same_query_model_and_unfrozen_trains_everything(small_adata, tmp_path):
    reference, query = _split(small_adata)
    model = _trained(reference)
    model.save(tmp_path / "reference")
    from_object = mv.MyVAE.load_query_data(query, model, unfrozen=True)
    from_folder = mv.MyVAE.load_query_data(query, tmp_path / "reference", unfrozen=True)
    for name, value in from_object.module.state_dict().items():
        assert torch.equal(value, from_folder.module.state_dict()[name]), name

    start = {name: value.clone() for name, value in from_object.module.state_dict().items()}
    from_object.train(**{**fast_train_kwargs(max_epochs=2), "early_stopping": False})
    assert not torch.equal(
        start["networks.z_mean_encoder.0.weight"], from_object.module.state_dict()["networks.z_mean_encoder.0.weight"]
    )


def test_a_reference_of_one_batch_decodes_it_as_before(small_adata):
    reference, query = _split(small_adata, reference_batches=("a",))
    model = _trained(reference)
    assert model.n_batch == 1
    query_model = mv.MyVAE.load_query_data(query, model)
    weight = query_model.module.state_dict()["networks.decoder.0.weight"]
    n_latent = query_model.n_latent
    assert query_model.batch_categories == ["a", "c"] and weight.shape[1] == n_latent + 2
    assert torch.equal(weight[:, n_latent], torch.zeros(weight.shape[0]))  # "a": a zero column
    query_model.train(**{**fast_train_kwargs(max_epochs=2), "early_stopping": False})
    latent = torch.as_tensor(query_model.get_latent_representation())
    a = torch.zeros(len(latent), dtype=torch.long)
    with torch.no_grad():
        np.testing.assert_allclose(
            query_model.module.networks.decode(latent, a.reshape(-1, 1)).numpy(),
            model.module.networks.decode(latent).numpy(),
            rtol=1e-5,
            atol=1e-5,
        )


def test_load_query_data_refuses_what_it_cannot_map(small_adata, tmp_path):
    reference, query = _split(small_adata)
    model = _trained(reference)
    with pytest.raises(InputError, match="reference_model takes a MyVAE or a folder"):
        mv.MyVAE.load_query_data(query, 3)
    with pytest.raises(InputError, match=r"takes an AnnData; for a MuData pass its modality, e.g. mdata\['rna'\]"):
        mv.MyVAE.load_query_data(md.MuData({"rna": query}), model)
    with pytest.raises(InputError, match="MyVAE.load_query_data expects an AnnData \\(cells × genes\\), got list"):
        mv.MyVAE.load_query_data([query], model)
    untrained_data = reference.copy()
    mv.MyVAE.setup_anndata(untrained_data)
    with pytest.raises(InputError, match="reference_model is untrained"):
        mv.MyVAE.load_query_data(query, mv.MyVAE(untrained_data))
    without_batches = mv.tl.myvae(reference.copy(), return_model=True, **fast_train_kwargs(max_epochs=2))
    with pytest.raises(InputError, match=r"trained without batches.*unfrozen=True"):
        mv.MyVAE.load_query_data(query, without_batches)
    assert mv.MyVAE.load_query_data(query, without_batches, unfrozen=True).n_batch == 1
    no_column = query.copy()
    del no_column.obs["sample"]
    with pytest.raises(InputError, match=r"trained with batches from obs\['sample'\], and these cells' obs has no"):
        mv.MyVAE.load_query_data(no_column, model)
    with pytest.raises(InputError, match="prepare_query_anndata"):
        mv.MyVAE.load_query_data(query[:, 5:].copy(), model)


def test_a_model_asked_about_cells_of_unseen_batches_says_how_to_map_them(small_adata):
    reference, query = _split(small_adata)
    model = _trained(reference)
    with pytest.raises(InputError, match=r"batches the model was not trained on \(c\).*load_query_data"):
        model.get_latent_representation(query)


def test_prepare_query_anndata_pads_and_orders_genes_in_a_new_anndata(small_adata):
    reference, query = _split(small_adata)
    model = _trained(reference)
    genes = mv.MyVAE.prepare_query_anndata(query, model, return_reference_var_names=True)
    assert genes.equals(reference.var_names)
    assert mv.MyVAE.prepare_query_anndata(query, model) is None  # nothing to do

    lacking = query[:, 5:][:, ::-1].copy()  # 5 genes fewer, the rest in reverse order
    before = fingerprint(lacking)
    with pytest.raises(InputError, match=r"lacks 5 of the reference's 230 genes.*inplace=False"):
        mv.MyVAE.prepare_query_anndata(lacking, model)
    padded = mv.MyVAE.prepare_query_anndata(lacking, model, inplace=False)
    assert fingerprint(lacking) == before
    assert padded.var_names.equals(reference.var_names) and padded.obs_names.equals(query.obs_names)
    counts, expected = padded.X.toarray(), query.X.toarray()
    np.testing.assert_array_equal(counts[:, :5], 0)
    np.testing.assert_array_equal(counts[:, 5:], expected[:, 5:])
    assert mv.MyVAE.load_query_data(padded, model).batch_categories == ["a", "b", "c"]
