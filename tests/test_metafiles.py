"""model-index.yml and the metafiles: every entry names a real config, and
results are only claimed for the configs trained here (the demos)."""
import os.path as osp

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
