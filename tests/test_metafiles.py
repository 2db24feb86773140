"""model-index.yml and the metafiles: every entry names a real config, and
results are only claimed for the configs trained here (the demos)."""
import glob
import os
import os.path as osp
import re

import yaml


def test_model_index_lists_real_configs(repo_root):
    with open(osp.join(repo_root, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    names = set()
    for metafile in index['Import']:
        with open(osp.join(repo_root, metafile)) as f:
            meta = yaml.safe_load(f)
        collections = {c['Name'] for c in meta['Collections']}
        for collection in meta['Collections']:
            assert collection['Paper']['URL'].startswith('https://arxiv.org/')
            assert collection['Code']['URL']
            assert collection['Metadata']['Architecture']
            assert osp.isfile(osp.join(repo_root, collection['README']))
        for model in meta['Models']:
            assert model['Name'] not in names
            names.add(model['Name'])
            assert model['In Collection'] in collections
            assert osp.isfile(osp.join(repo_root, model['Config'])), model
            metadata = model['Metadata']
            for key in ('Parameters (M)', 'FLOPs (G)'):
                assert isinstance(metadata[key], float), (model['Name'], key)
            assert 'x' in metadata['Input Size']
            trained_here = model['Config'].startswith('configs/demo/')
            assert ('Results' in model) == trained_here, model['Name']
            for result in model.get('Results', []):
                assert 'generated' in result['Dataset']
                assert all(isinstance(v, float)
                           for v in result['Metrics'].values())


def _metafile_configs(repo_root):
    with open(osp.join(repo_root, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    configs = []
    for metafile in index['Import']:
        with open(osp.join(repo_root, metafile)) as f:
            configs += [m['Config'] for m in yaml.safe_load(f)['Models']]
    return configs


def test_every_runnable_config_is_in_a_metafile(repo_root):
    """Flat layout: the runnable configs are configs/<name>.py (and the
    demos); each is listed once, under its real path."""
    runnable = sorted(
        osp.relpath(path, repo_root)
        for pattern in ('configs/*.py', 'configs/demo/*.py')
        for path in glob.glob(osp.join(repo_root, pattern)))
    assert 'configs/ssdlite_falcon_coco.py' in runnable
    assert sorted(_metafile_configs(repo_root)) == runnable


def test_family_folders_hold_only_their_readme_and_metafile(repo_root):
    with open(osp.join(repo_root, 'model-index.yml')) as f:
        metafiles = yaml.safe_load(f)['Import']
    for metafile in metafiles:
        family = osp.dirname(osp.join(repo_root, metafile))
        assert sorted(os.listdir(family)) == ['README.md', 'metafile.yml']
        with open(osp.join(family, 'README.md')) as f:
            links = re.findall(r'\]\((\.[^)]+\.py)\)', f.read())
        assert links, family
        for link in links:
            assert osp.isfile(osp.join(family, link)), (family, link)
