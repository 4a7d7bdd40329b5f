'use strict';
// Plexus event mesh client for Node.js: connect to an event node, register async functions under
// route names, and send, request and broadcast events to any route in the mesh.

const { App, EventError, connect } = require('./app');
const { Event, DecodeError } = require('./envelope');
const { postEvent } = require('./http');

module.exports = { App, Event, EventError, DecodeError, connect, postEvent };
