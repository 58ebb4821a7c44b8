// Overview: the cards and the nodes table with each node's token summary (P-1).
'use strict';

(() => {
  const { $, api, setNumber, fillTable, cell, num, badge, ms } = window.LR;

  async function refresh() {
    const [stats, nodes] = await Promise.all([api('/api/dashboard/stats'), api('/api/dashboard/nodes')]);
    setNumber($('card-requests'), stats.total_requests);
    setNumber($('card-success'), stats.successful_requests);
    setNumber($('card-failed'), stats.failed_requests);
    setNumber($('card-active'), stats.active_requests);
    setNumber($('card-online'), stats.online_nodes);
    setNumber($('card-nodes'), stats.total_nodes);
    setNumber($('card-input'), stats.total_input_tokens);
    setNumber($('card-output'), stats.total_output_tokens);
    setNumber($('card-total'), stats.total_tokens);
    const shown = nodes.nodes.filter((n) => !n.deleted || n.total_requests > 0);
    const count = fillTable($('nodes-table'), shown.map((n) => ({
      key: n.id,
      cls: n.deleted ? 'deleted' : '',
      cells: [
        cell(n.name),
        cell(n.deleted ? badge('deleted') : badge(n.status)),
        cell(n.models.join(', ') || '–'),
        num(n.total_requests),
        cell(ms(n.average_response_time_ms), 'num'),
        num(n.total_input_tokens),
        num(n.total_output_tokens),
        num(n.total_tokens),
        cell(n.average_tokens_per_request.toFixed(1), 'num'),
      ],
    })));
    $('nodes-empty').hidden = count > 0;
  }

  window.LR.pages.overview = { refresh };
})();
